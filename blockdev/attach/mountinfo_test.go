package attach

import "testing"

func TestParseMountInfo(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		line    string
		want    mountEntry
		wantErr bool
	}{
		{
			name: "loop ext4",
			line: "36 35 7:3 / /mnt/a rw,relatime shared:1 - ext4 /dev/loop3 rw",
			want: mountEntry{major: 7, minor: 3, mountPoint: "/mnt/a", fsType: "ext4", source: "/dev/loop3"},
		},
		{
			name: "fuse with escaped space, no optional fields",
			line: `40 35 0:52 / /tmp/my\040dir rw,nosuid - fuse.strata strata rw,user_id=0`,
			want: mountEntry{major: 0, minor: 52, mountPoint: "/tmp/my dir", fsType: "fuse.strata", source: "strata"},
		},
		{name: "no separator", line: "36 35 7:3 / /mnt/a rw ext4 /dev/loop3 rw", wantErr: true},
		{name: "bad device", line: "36 35 7-3 / /mnt/a rw - ext4 /dev/loop3 rw", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseMountInfo([]byte(tc.line + "\n"))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("parsed %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0] != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
