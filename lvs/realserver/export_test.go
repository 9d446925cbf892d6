package realserver

// Internals for the tests of package realserver_test, which are outside the
// package because they use rstest, which imports it.
var (
	DisplayKey = displayKey
	VIPAddr    = vipAddr
	ReadState  = readState
	WriteState = writeState
)

type State = state
