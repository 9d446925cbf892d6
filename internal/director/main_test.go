package director

import (
	"os"
	"testing"

	"github.com/lvsha/lvsha/internal/director/checker"
)

// TestMain lets a daemon under test start this test binary as its health
// checker process, the way the lvsha binary starts itself.
func TestMain(m *testing.M) {
	checker.RunChildIfAsked()
	os.Exit(m.Run())
}
