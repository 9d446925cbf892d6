package checker

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
)

// maxFrame bounds a message. The largest legitimate ones, measured at
// 10,000 targets (TestLargestMessagesFit): an update 1.6 MB, a snapshot
// 5.6 MB with 300-byte errors, the statistics 7.8 MB if every target has
// failed in every class; 32 MiB leaves four times that.
const maxFrame = 32 << 20

// errFrameTooBig is a message over maxFrame; writeFrame sends nothing then.
var errFrameTooBig = errors.New("message over the frame limit")

// Messages are framed as a 4-byte big-endian length and that much JSON.
// Unlike a json.Decoder on the stream, which keeps a buffer as big as the
// largest message it ever read (an update or a snapshot, megabytes), a
// frame's buffer is garbage once decoded.

// writeFrame encodes v as one frame. Callers serialise writes.
func writeFrame(conn net.Conn, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	if len(body) > maxFrame {
		return fmt.Errorf("%w: %d bytes, limit %d", errFrameTooBig, len(body), maxFrame)
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(body)))
	bufs := net.Buffers{hdr[:], body}
	_, err = bufs.WriteTo(conn)
	return err
}

// frameReader reads frames from a stream.
type frameReader struct{ r *bufio.Reader }

func newFrameReader(r io.Reader) *frameReader { return &frameReader{bufio.NewReaderSize(r, 16<<10)} }

// read decodes the next frame into v; io.EOF at a clean end.
func (f *frameReader) read(v any) error {
	var hdr [4]byte
	if _, err := io.ReadFull(f.r, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxFrame {
		return fmt.Errorf("frame of %d bytes: over the %d limit", n, maxFrame)
	}
	// The length is only the peer's word (a corrupt stream may say
	// anything up to the limit): the buffer grows as bytes arrive.
	body, err := io.ReadAll(io.LimitReader(f.r, int64(n)))
	if err != nil {
		return fmt.Errorf("frame: %w", err)
	}
	if len(body) < int(n) {
		return fmt.Errorf("frame: %d of %d bytes: %w", len(body), n, io.ErrUnexpectedEOF)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("frame: %w", err)
	}
	return nil
}
