package fs

import "golang.org/x/sys/unix"

// Filesystem types (statfs f_type) whose calls go to a server that may
// be away: network filesystems and FUSE.
var remoteFS = map[int64]bool{
	0x6969:     true, // NFS
	0xFF534D42: true, // CIFS
	0xFE534D42: true, // SMB2
	0x517B:     true, // SMB
	0x00C36400: true, // Ceph
	0x01021997: true, // 9P (v9fs)
	0x65735546: true, // FUSE
	0x0BD00BD0: true, // Lustre
	0x47504653: true, // GPFS
	0x013111A8: true, // IBRIX
	0x5346414F: true, // AFS
	0x6B414653: true, // kAFS
}

// onLocalDisk reports whether dir is on a filesystem that is not one of
// remoteFS; if statfs fails, it says no (the cautious answer).
func onLocalDisk(dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	return !remoteFS[int64(st.Type)]
}
