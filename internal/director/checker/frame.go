package checker

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
)

// maxFrame bounds a message: 10,000 targets' snapshot is about 3 MB.
const maxFrame = 256 << 20

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
	body := make([]byte, n)
	if _, err := io.ReadFull(f.r, body); err != nil {
		return fmt.Errorf("frame: %w", io.ErrUnexpectedEOF)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("frame: %w", err)
	}
	return nil
}
