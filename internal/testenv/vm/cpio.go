package vm

import (
	"fmt"
	"io"
	"os"
	"path"
	"strings"
)

// cpioWriter writes the "newc" cpio format the kernel unpacks as an
// initramfs. The kernel does not create missing parent directories, so the
// writer emits every parent before the entry that needs it.
type cpioWriter struct {
	w    io.Writer
	ino  uint32
	dirs map[string]bool
	err  error
}

const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeLink = 0o120000
	modeChr  = 0o020000
)

func newCPIO(w io.Writer) *cpioWriter {
	return &cpioWriter{w: w, ino: 1, dirs: map[string]bool{"": true, ".": true}}
}

func (c *cpioWriter) header(name string, mode, size, rmaj, rmin uint32) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, size, 0, 0, rmaj, rmin, len(name)+1, 0)
	c.write([]byte(hdr + name + "\x00"))
	c.pad(len(hdr) + len(name) + 1)
}

func (c *cpioWriter) write(b []byte) {
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

func (c *cpioWriter) pad(n int) {
	if r := n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

// clean turns a guest path into the relative form cpio archives use.
func clean(p string) string {
	return strings.TrimPrefix(path.Clean("/"+p), "/")
}

func (c *cpioWriter) mkdirAll(dir string) {
	dir = clean(dir)
	if c.dirs[dir] {
		return
	}
	c.mkdirAll(path.Dir(dir))
	c.dirs[dir] = true
	c.header(dir, modeDir|0o755, 0, 0, 0)
}

// File adds a regular file with the given content.
func (c *cpioWriter) File(name string, mode uint32, data []byte) {
	name = clean(name)
	c.mkdirAll(path.Dir(name))
	c.header(name, modeFile|mode, uint32(len(data)), 0, 0)
	c.write(data)
	c.pad(len(data))
}

// HostFile copies a file from the host, keeping its permission bits.
func (c *cpioWriter) HostFile(name, hostPath string) {
	if c.err != nil {
		return
	}
	f, err := os.Open(hostPath)
	if err != nil {
		c.err = err
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		c.err = err
		return
	}
	if !st.Mode().IsRegular() {
		c.err = fmt.Errorf("%s: not a regular file", hostPath)
		return
	}
	name = clean(name)
	c.mkdirAll(path.Dir(name))
	c.header(name, modeFile|uint32(st.Mode().Perm()), uint32(st.Size()), 0, 0)
	if c.err != nil {
		return
	}
	n, err := io.Copy(c.w, f)
	if err != nil {
		c.err = err
		return
	}
	if n != st.Size() {
		c.err = fmt.Errorf("%s changed size while copying", hostPath)
		return
	}
	c.pad(int(n))
}

// Symlink adds a symbolic link.
func (c *cpioWriter) Symlink(name, target string) {
	name = clean(name)
	c.mkdirAll(path.Dir(name))
	c.header(name, modeLink|0o777, uint32(len(target)), 0, 0)
	c.write([]byte(target))
	c.pad(len(target))
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(name string, major, minor uint32) {
	name = clean(name)
	c.mkdirAll(path.Dir(name))
	c.header(name, modeChr|0o600, 0, major, minor)
}

// Close writes the trailer and reports the first error.
func (c *cpioWriter) Close() error {
	c.header("TRAILER!!!", 0, 0, 0, 0)
	return c.err
}
