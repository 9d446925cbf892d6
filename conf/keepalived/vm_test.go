package keepalived

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/internal/testenv/vm"
	"github.com/lvsha/lvsha/internal/testenv/vm/vmtest"
)

// ipvsConf is a keepalived.conf with services only (the VM's kernel has
// IPVS; VRRP is tested in pair_test.go): keepalived's defaults (UDP when
// no protocol, NAT, wlc, persistence 360 s without a value) next to
// explicit values, schedulers, forwarding methods and weights. Real
// servers have no checks, except two that fail (no route to them in the
// namespace): one inhibited (weight 0), one removed; fwmark
// services are left out because keepalived clears their real servers'
// ports and lvsha cannot (the import warns).
const ipvsConf = `! no global_defs: the test adds lvsha's [global]
virtual_server 10.0.0.1 80 {
    lb_algo rr
    lb_kind DR
    protocol TCP
    persistence_timeout 50
    real_server 10.0.1.1 80 {
        weight 3
    }
    real_server 10.0.1.2 80 {
        weight 0
    }
}
virtual_server 10.0.0.1 443 {
    lvs_sched wrr
    lvs_method NAT
    protocol TCP
    persistence_timeout
    weight 4
    real_server 10.0.1.1 8443 {
        weight 2
    }
    real_server 10.0.1.2 8443 {
    }
}
virtual_server 10.0.0.2 53 {
    lb_algo sh
    lb_kind TUN
    protocol UDP
    real_server 10.0.1.3 53 {
    }
}
virtual_server 10.0.0.4 80 {
    lb_algo rr
    lb_kind DR
    protocol TCP
    delay_loop 1
    inhibit_on_failure
    real_server 10.0.2.1 80 {
        TCP_CHECK {
            connect_timeout 0.5
        }
    }
    real_server 10.0.2.2 80 {
        weight 2
    }
}
virtual_server 10.0.0.5 80 {
    lb_algo rr
    lb_kind DR
    protocol TCP
    delay_loop 1
    real_server 10.0.2.3 80 {
        TCP_CHECK {
            connect_timeout 0.5
        }
    }
    real_server 10.0.2.4 80 {
    }
}
virtual_server 10.0.0.3 8080 {
    quorum 1
    sorry_server 10.0.1.9 8080
    real_server 10.0.1.4 8080 {
        weight 5
    }
}
`

// TestVMIPVSMatchesKeepalived boots the VM where keepalived 2.2.7 and
// lvsha, on the TOML imported from the same keepalived.conf, each program
// IPVS in a namespace of their own, and compares `ipvsadm -Sn` of both.
func TestVMIPVSMatchesKeepalived(t *testing.T) {
	vmtest.Need(t)
	dir := t.TempDir()
	lvsha := filepath.Join(dir, "lvsha")
	if err := vm.BuildStatic(context.Background(), "github.com/lvsha/lvsha/cmd/lvsha", lvsha); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"/bin/lvsha": lvsha}
	for _, exe := range []string{"keepalived", "ipvsadm"} {
		f, err := vm.WithLibs(exe)
		if err != nil {
			t.Fatalf("%s (apt-get install %s): %v", exe, exe, err)
		}
		for k, v := range f {
			files[k] = v
		}
	}
	vmtest.Run(t, "^TestGuestIPVSMatchesKeepalived$", vm.Options{Files: files, Timeout: 3 * time.Minute, MemoryMB: 768})
}

// TestGuestIPVSMatchesKeepalived runs in the VM (started by
// TestVMIPVSMatchesKeepalived).
func TestGuestIPVSMatchesKeepalived(t *testing.T) {
	if !vm.InGuest() {
		t.Skip("runs inside the VM, started by TestVMIPVSMatchesKeepalived")
	}
	dir := t.TempDir()
	kconf := filepath.Join(dir, "keepalived.conf")
	if err := os.WriteFile(kconf, []byte(ipvsConf), 0o644); err != nil {
		t.Fatal(err)
	}
	root, pw, err := ParseFile(kconf, Options{})
	if err != nil {
		t.Fatal(err)
	}
	res := Translate(kconf, root)
	if len(pw)+len(res.Warnings) > 0 || len(res.Invalid) > 0 {
		t.Fatalf("import: warnings %v %v, invalid %v", pw, res.Warnings, res.Invalid)
	}
	toml := string(res.TOML) + fmt.Sprintf("\n[global]\ncontrol_socket = %q\nstate_dir = %q\n",
		filepath.Join(dir, "lvsha.sock"), filepath.Join(dir, "state"))
	lconf := filepath.Join(dir, "lvsha.toml")
	if err := os.WriteFile(lconf, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("imported:\n%s", toml)

	ka := runInNS(t, "ka", "/usr/sbin/keepalived", "-n", "-C", "-f", kconf,
		"-p", filepath.Join(dir, "k.pid"), "-c", filepath.Join(dir, "c.pid"))
	lv := runInNS(t, "lv", "/bin/lvsha", "-f", lconf)
	// 6 services, 10 real servers of which one failed and was removed: 15
	// lines, once the failed checks have run out their retry.
	settled := func(lines []string) bool {
		return len(lines) == 15 && slices.Contains(lines, "-a -t 10.0.0.4:80 -r 10.0.2.1:80 -g -w 0")
	}
	want := ka.table(t, settled)
	t.Logf("keepalived's ipvsadm -Sn:\n%s", strings.Join(want, "\n"))
	got := lv.table(t, func(lines []string) bool { return slices.Equal(lines, want) })
	if !slices.Equal(got, want) {
		t.Errorf("ipvsadm -Sn differ\n--- lvsha\n%s\n--- keepalived\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

type nsProc struct {
	ns  *netns.NS
	log string
}

func runInNS(t *testing.T, name, bin string, args ...string) *nsProc {
	t.Helper()
	ns, err := netns.New("kimp-" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	p := &nsProc{ns: ns, log: filepath.Join(t.TempDir(), "log")}
	lf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := ns.Start(cmd); err != nil {
		t.Fatal(err)
	}
	lf.Close()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			t.Logf("log of %s:\n%s", name, b)
		}
	})
	return p
}

// table waits until `ipvsadm -Sn` in the namespace, its lines sorted (the
// kernel lists services in hash order), satisfies done, and returns it;
// after 30 s it returns what it last read.
func (p *nsProc) table(t *testing.T, done func([]string) bool) []string {
	t.Helper()
	var lines []string
	netns.WaitFor(30*time.Second, 100*time.Millisecond, func() bool {
		out, err := p.ns.Run("/usr/sbin/ipvsadm", "-Sn")
		if err != nil {
			return false
		}
		lines = strings.Split(strings.TrimSpace(out), "\n")
		slices.Sort(lines)
		return done(lines)
	})
	return lines
}
