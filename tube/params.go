package tube

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/tubes-dev/tubes/api"
	"github.com/tubes-dev/tubes/identity"
	"github.com/tubes-dev/tubes/tperr"
)

// ParamsRequest describes the offer a parameters generator is asked for:
// the tube and the recipient hints (Contact for p2p tubes, Room for room
// tubes).
type ParamsRequest struct {
	Tube, Service, Contact, Room string
}

// maxParams bounds the parameters of one tube.
const maxParams = 64

// checkParams validates a parameters map: types and values agree, keys
// are short and printable.
func checkParams(p map[string]api.Value) error {
	if len(p) > maxParams {
		return tperr.New(tperr.InvalidArgument, "a tube has at most %d parameters", maxParams)
	}
	for k, v := range p {
		if k == "" || len(k) > 255 || clip(k) != k {
			return tperr.New(tperr.InvalidArgument, "parameter name %q must be 1 to 255 printable characters", clip(k))
		}
		if err := v.Check(); err != nil {
			return tperr.New(tperr.InvalidArgument, "parameter %s: %v", k, err)
		}
	}
	return nil
}

// sealInfo binds sealed parameters to one tube, offerer and recipient, so
// they cannot be replayed into another offer.
func sealInfo(id, from, to string) []byte {
	return []byte("tubes/v1 tube parameters\x00" + id + "\x00" + from + "\x00" + to)
}

func sealParams(p map[string]api.Value, key identity.PublicKey, id, from, to string) ([]byte, error) {
	if len(p) == 0 {
		return nil, nil
	}
	plain, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	return identity.Seal(key, sealInfo(id, from, to), plain)
}

func openParams(sealed []byte, key *identity.Key, id, from, to string) (map[string]api.Value, error) {
	if len(sealed) == 0 {
		return nil, nil
	}
	plain, err := key.Open(sealInfo(id, from, to), sealed)
	if err != nil {
		return nil, err
	}
	var p map[string]api.Value
	if err := json.Unmarshal(plain, &p); err != nil {
		return nil, err
	}
	return p, checkParams(p)
}

// paramsExecTimeout bounds a --params-exec command.
const paramsExecTimeout = 10 * time.Second

// execParams runs an export's --params-exec command for one offer. The
// command gets the offer in TUBE_* variables and prints a JSON object of
// parameters. Its output is never logged: it is usually a secret.
func execParams(ctx context.Context, command, account string, req ParamsRequest) (map[string]api.Value, error) {
	ctx, cancel := context.WithTimeout(ctx, paramsExecTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Env = append(os.Environ(),
		"TUBE_ACCOUNT="+account, "TUBE_ID="+req.Tube, "TUBE_SERVICE="+req.Service,
		"TUBE_CONTACT="+req.Contact, "TUBE_ROOM="+req.Room)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, tperr.New(tperr.Timeout, "the --params-exec command of %s did not finish within %s", req.Service, paramsExecTimeout)
		}
		msg := clip(strings.TrimSpace(firstLine(stderr.String())))
		if msg == "" {
			msg = err.Error()
		}
		return nil, tperr.New(tperr.NotAvailable, "the --params-exec command of %s failed: %s", req.Service, msg)
	}
	var p map[string]api.Value
	dec := json.NewDecoder(&stdout)
	if err := dec.Decode(&p); err != nil {
		return nil, tperr.New(tperr.InvalidArgument, "the --params-exec command of %s must print a JSON object of parameters (%v)", req.Service, err)
	}
	if err := checkParams(p); err != nil {
		return nil, err
	}
	return p, nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
