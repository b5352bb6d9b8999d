package nbd

import (
	"encoding/binary"
	"fmt"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Wire constants. Those go-nbd's protocol package defines are taken from
// it; the rest (structured replies, metadata contexts, STARTTLS, the
// transmission flags and commands beyond READ/WRITE/DISC) are added here
// under the NBD specification's names (doc/proto.md of the reference
// implementation).
const (
	magicNBD               = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	magicOption            = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	magicOptionReply       = protocol.NEGOTIATION_MAGIC_REPLY
	magicRequest           = protocol.TRANSMISSION_MAGIC_REQUEST
	magicSimpleReply       = protocol.TRANSMISSION_MAGIC_REPLY
	magicStructuredReply   = uint32(0x668e33ef)
	handshakeFixedNewstyle = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	handshakeNoZeroes      = uint16(1 << 1)
	clientFixedNewstyle    = uint32(1 << 0)
	clientNoZeroes         = uint32(1 << 1)
)

// Options (NBD_OPT_*).
const (
	optExportName      = uint32(1)
	optAbort           = protocol.NEGOTIATION_ID_OPTION_ABORT
	optList            = protocol.NEGOTIATION_ID_OPTION_LIST
	optStartTLS        = uint32(5)
	optInfo            = protocol.NEGOTIATION_ID_OPTION_INFO
	optGo              = protocol.NEGOTIATION_ID_OPTION_GO
	optStructuredReply = uint32(8)
	optListMetaContext = uint32(9)
	optSetMetaContext  = uint32(10)
)

// Option reply types (NBD_REP_*).
const (
	repAck          = protocol.NEGOTIATION_TYPE_REPLY_ACK
	repServer       = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	repInfo         = protocol.NEGOTIATION_TYPE_REPLY_INFO
	repMetaContext  = uint32(4)
	repErrUnsup     = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	repErrPolicy    = uint32(2 | 1<<31)
	repErrInvalid   = uint32(3 | 1<<31)
	repErrTLSReqd   = uint32(5 | 1<<31)
	repErrUnknown   = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	repErrShutdown  = uint32(7 | 1<<31)
	repErrTooBig    = uint32(9 | 1<<31)
	infoExport      = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	infoName        = protocol.NEGOTIATION_TYPE_INFO_NAME
	infoDescription = protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION
	infoBlockSize   = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE
)

// Transmission flags (NBD_FLAG_*).
const (
	flagHasFlags        = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	flagReadOnly        = uint16(1 << 1)
	flagSendFlush       = uint16(1 << 2)
	flagSendFUA         = uint16(1 << 3)
	flagSendTrim        = uint16(1 << 5)
	flagSendWriteZeroes = uint16(1 << 6)
	flagSendDF          = uint16(1 << 7)
	flagCanMultiConn    = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN
	flagSendFastZero    = uint16(1 << 11)
)

// Commands (NBD_CMD_*) and command flags (NBD_CMD_FLAG_*).
const (
	cmdRead        = protocol.TRANSMISSION_TYPE_REQUEST_READ
	cmdWrite       = protocol.TRANSMISSION_TYPE_REQUEST_WRITE
	cmdDisc        = protocol.TRANSMISSION_TYPE_REQUEST_DISC
	cmdFlush       = uint16(3)
	cmdTrim        = uint16(4)
	cmdWriteZeroes = uint16(6)
	cmdBlockStatus = uint16(7)

	cmdFlagFUA      = uint16(1 << 0)
	cmdFlagNoHole   = uint16(1 << 1)
	cmdFlagDF       = uint16(1 << 2)
	cmdFlagReqOne   = uint16(1 << 3)
	cmdFlagFastZero = uint16(1 << 4)
)

// Structured reply chunk flags and types (NBD_REPLY_*).
const (
	replyFlagDone         = uint16(1 << 0)
	replyTypeNone         = uint16(0)
	replyTypeOffsetData   = uint16(1)
	replyTypeOffsetHole   = uint16(2)
	replyTypeBlockStatus  = uint16(5)
	replyTypeError        = uint16(1<<15 | 1)
	stateHole             = uint32(1 << 0)
	stateZero             = uint32(1 << 1)
	metaBaseAllocation    = "base:allocation"
	metaBaseAllocationID  = uint32(1)
	simpleReplyHeaderSize = 16
	chunkHeaderSize       = 20
	requestHeaderSize     = 28
)

// Error values (NBD_E*), which the specification fixes independently of
// the host's errno numbering.
const (
	errPerm     = protocol.TRANSMISSION_ERROR_EPERM
	errIO       = uint32(5)
	errInval    = protocol.TRANSMISSION_ERROR_EINVAL
	errNoSpc    = uint32(28)
	errOverflow = uint32(75)
	errNotSup   = uint32(95)
	errShutdown = uint32(108)
)

// Block size constraints advertised with NBD_INFO_BLOCK_SIZE.
const (
	minBlockSize       = 1
	preferredBlockSize = 4096
	// MaxPayload is the largest READ or WRITE the server accepts (the
	// advertised maximum block size): 32 MiB, the size the specification
	// says a client may always use.
	MaxPayload = 32 << 20
)

// errnoName names an NBD error value for messages and logs.
func errnoName(e uint32) string {
	switch e {
	case errPerm:
		return "EPERM"
	case errIO:
		return "EIO"
	case errInval:
		return "EINVAL"
	case errNoSpc:
		return "ENOSPC"
	case errOverflow:
		return "EOVERFLOW"
	case errNotSup:
		return "ENOTSUP"
	case errShutdown:
		return "ESHUTDOWN"
	default:
		return fmt.Sprintf("error %d", e)
	}
}

// cmdName names a command for messages and logs.
func cmdName(c uint16) string {
	switch c {
	case cmdRead:
		return "read"
	case cmdWrite:
		return "write"
	case cmdDisc:
		return "disc"
	case cmdFlush:
		return "flush"
	case cmdTrim:
		return "trim"
	case cmdWriteZeroes:
		return "write-zeroes"
	case cmdBlockStatus:
		return "block-status"
	default:
		return fmt.Sprintf("cmd-%d", c)
	}
}

// decodeRequest decodes a transmission request header (requestHeaderSize
// bytes). It fails only on a wrong magic, after which the stream cannot
// be resynchronised.
func decodeRequest(b []byte) (protocol.TransmissionRequestHeader, error) {
	h := protocol.TransmissionRequestHeader{
		RequestMagic: binary.BigEndian.Uint32(b[0:4]),
		CommandFlags: binary.BigEndian.Uint16(b[4:6]),
		Type:         binary.BigEndian.Uint16(b[6:8]),
		Handle:       binary.BigEndian.Uint64(b[8:16]),
		Offset:       binary.BigEndian.Uint64(b[16:24]),
		Length:       binary.BigEndian.Uint32(b[24:28]),
	}
	if h.RequestMagic != magicRequest {
		return h, fmt.Errorf("request magic %#08x, want %#08x: %w", h.RequestMagic, magicRequest, ErrProtocol)
	}
	return h, nil
}

// putSimpleReply encodes a simple reply header into b[:16].
func putSimpleReply(b []byte, errno uint32, handle uint64) {
	binary.BigEndian.PutUint32(b[0:4], magicSimpleReply)
	binary.BigEndian.PutUint32(b[4:8], errno)
	binary.BigEndian.PutUint64(b[8:16], handle)
}

// putChunkHeader encodes a structured reply chunk header into b[:20].
func putChunkHeader(b []byte, flags, typ uint16, handle uint64, length uint32) {
	binary.BigEndian.PutUint32(b[0:4], magicStructuredReply)
	binary.BigEndian.PutUint16(b[4:6], flags)
	binary.BigEndian.PutUint16(b[6:8], typ)
	binary.BigEndian.PutUint64(b[8:16], handle)
	binary.BigEndian.PutUint32(b[16:20], length)
}

// allowedFlags lists the command flags each command accepts; any other
// flag is answered with EINVAL. FUA is accepted everywhere, as the
// specification requires once SEND_FUA is advertised.
func allowedFlags(cmd uint16, structured bool) (uint16, bool) {
	switch cmd {
	case cmdRead:
		if structured {
			return cmdFlagFUA | cmdFlagDF, true
		}
		return cmdFlagFUA, true
	case cmdWrite, cmdFlush, cmdTrim, cmdDisc:
		return cmdFlagFUA, true
	case cmdWriteZeroes:
		return cmdFlagFUA | cmdFlagNoHole | cmdFlagFastZero, true
	case cmdBlockStatus:
		return cmdFlagFUA | cmdFlagReqOne, true
	default:
		return 0, false
	}
}
