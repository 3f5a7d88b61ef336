package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// Every command in the tree: an unknown flag is a usage error; a command
// group given a subcommand it lacks is a usage error; a group without an
// action of its own, run bare, is a usage error. Each is exit 2 with one
// sentence on stderr naming what was wrong, and nothing on stdout.
func TestCommandTreeUsageErrors(t *testing.T) {
	var walk func(c *cobra.Command)
	var cmds []*cobra.Command
	walk = func(c *cobra.Command) {
		cmds = append(cmds, c)
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRoot(&env{}))
	groups := 0
	for _, c := range cmds {
		path := strings.Fields(c.CommandPath())[1:]
		try := func(want string, args ...string) {
			t.Helper()
			var out, errb bytes.Buffer
			args = append([]string{"--socket", "/nonexistent/tube.sock"}, append(append([]string(nil), path...), args...)...)
			code := Run(context.Background(), args, &out, &errb)
			lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
			if code != ExitUsage || out.Len() != 0 || len(lines) != 2 || !strings.HasPrefix(lines[0], "tube: ") || !strings.Contains(lines[0], want) {
				t.Errorf("tube %s: exit %d, stdout %q, stderr %q; want exit %d and one sentence naming %q", strings.Join(args[2:], " "), code, out.String(), errb.String(), ExitUsage, want)
			}
		}
		try("--no-such-flag", "--no-such-flag")
		if !c.HasSubCommands() {
			continue
		}
		groups++
		try(`"no-such-subcommand"`, "no-such-subcommand", "x")
		if c.Annotations[groupAnnotation] != "" {
			try("needs a subcommand")
		} else if !c.Runnable() {
			t.Errorf("tube %s is a group with no action that is not a usage error", strings.Join(path, " "))
		}
	}
	if len(cmds) < 40 || groups < 6 {
		t.Fatalf("walked %d commands and %d groups: the tree is not all there", len(cmds), groups)
	}
}

// A typo of a subcommand gets a suggestion; help for no such command is a
// usage error, help for a real one is not.
func TestSubcommandTypos(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"room", "invte", "lab", "bob"}, ExitUsage, `tube room has no subcommand "invte"`},
		{[]string{"relay", "user", "ad", "carol"}, ExitUsage, "did you mean add?"},
		{[]string{"relay", "usr"}, ExitUsage, `tube relay has no subcommand "usr"`},
		{[]string{"version", "x"}, ExitUsage, "takes no arguments"},
		{[]string{"help", "nosuch"}, ExitUsage, `no command "nosuch"`},
		{[]string{"help", "room", "create"}, ExitOK, ""},
	} {
		var out, errb bytes.Buffer
		code := Run(context.Background(), tc.args, &out, &errb)
		if code != tc.code || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("tube %s: exit %d, stderr %q; want exit %d and %q", strings.Join(tc.args, " "), code, errb.String(), tc.code, tc.want)
		}
	}
}
