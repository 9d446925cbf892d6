package healthcheck

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
)

// Failure classes: the fixed set a failed check is counted under in
// metrics. The reason's text (Reason) names a status, a certificate, a
// command's output: as a metric label each distinct text would be a new
// series (an expired certificate's error changes with the clock), so it
// goes to the target's last error and the label takes its class.
const (
	ClassTimeout     = "timeout"     // no answer within the check's timeout
	ClassRefused     = "refused"     // connection refused
	ClassReset       = "reset"       // the server reset or closed the connection mid-check
	ClassUnreachable = "unreachable" // no route to the host or network
	ClassTLS         = "tls"         // handshake or certificate refused
	ClassStatus      = "status"      // an HTTP status outside the expected ones
	ClassBody        = "body"        // the body did not match
	ClassExec        = "exec"        // the command failed (exit status, signal, cannot run)
	ClassOther       = "other"       // anything else (e.g. not HTTP)
)

// tlsStage is the stage of an https check's handshake (see stage).
const tlsStage = "tls handshake"

// FailureClasses lists every class FailureClass returns.
var FailureClasses = []string{ClassTimeout, ClassRefused, ClassReset, ClassUnreachable, ClassTLS,
	ClassStatus, ClassBody, ClassExec, ClassOther}

// FailureClass sorts the error of a failed check of type t into one of
// FailureClasses.
func FailureClass(t CheckType, err error) string {
	var (
		ne      net.Error
		status  *StatusError
		se      *stageError
		verify  *tls.CertificateVerificationError
		unknown x509.UnknownAuthorityError
		invalid x509.CertificateInvalidError
		host    x509.HostnameError
		alert   tls.AlertError
		record  tls.RecordHeaderError
	)
	switch {
	// A timeout first: it ends any stage, a TLS handshake's too.
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return ClassTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		return ClassRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ClassReset
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return ClassUnreachable
	case errors.As(err, &se) && se.stage == tlsStage,
		errors.As(err, &verify), errors.As(err, &unknown), errors.As(err, &invalid), errors.As(err, &host),
		errors.As(err, &alert), errors.As(err, &record):
		return ClassTLS
	case errors.As(err, &status):
		return ClassStatus
	case errors.Is(err, ErrBodyMismatch):
		return ClassBody
	case t == TypeExec:
		return ClassExec
	}
	return ClassOther
}
