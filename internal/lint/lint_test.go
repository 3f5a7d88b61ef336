// Package lint holds repository-wide checks that run with the tests:
// gofmt, a package comment on every package, no "return v, f(&v)", and
// no test lab linked into the tube binary.
package lint

import (
	"bytes"
	"go/ast"
	"go/format"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func repoRoot(t *testing.T) string {
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("no go.mod at %s", dir)
	}
	return dir
}

func goFiles(t *testing.T) []string {
	root := repoRoot(t)
	var files []string
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") && path != root {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") {
			files = append(files, path)
		}
		return nil
	})
	return files
}

// TestGofmt fails on any file gofmt would change.
func TestGofmt(t *testing.T) {
	for _, f := range goFiles(t) {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out, err := format.Source(src)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if !bytes.Equal(src, out) {
			t.Errorf("%s is not gofmt'd (run gofmt -w %s)", f, f)
		}
	}
}

// TestPackageDocs requires a package comment in every package, so a
// reader knows which part of the system a folder belongs to.
func TestPackageDocs(t *testing.T) {
	documented := map[string]bool{}
	seen := map[string]bool{}
	fset := token.NewFileSet()
	for _, f := range goFiles(t) {
		dir := filepath.Dir(f)
		af, err := parser.ParseFile(fset, f, nil, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		name := af.Name.Name
		if strings.HasSuffix(name, "_test") {
			continue
		}
		key := dir + ":" + name
		seen[key] = true
		if af.Doc != nil && strings.HasPrefix(af.Doc.Text(), "Package "+name+" ") || af.Doc != nil && name == "main" && strings.HasPrefix(af.Doc.Text(), "Command ") {
			documented[key] = true
		}
	}
	for key := range seen {
		if !documented[key] {
			t.Errorf("package %s has no package comment (\"// Package …\")", key)
		}
	}
}

// TestReturnOrder fails on a return statement that hands back a variable
// beside a call given that variable's address (return out, f(&out)):
// the Go spec leaves the order of those two evaluations open, so the
// caller may get out as it was before the call filled it.
func TestReturnOrder(t *testing.T) {
	fset := token.NewFileSet()
	for _, f := range goFiles(t) {
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(af, func(n ast.Node) bool {
			ret, ok := n.(*ast.ReturnStmt)
			if !ok || len(ret.Results) < 2 {
				return true
			}
			bare := map[string]bool{}
			for _, r := range ret.Results {
				if id, ok := unparen(r).(*ast.Ident); ok {
					bare[id.Name] = true
				}
			}
			for _, r := range ret.Results {
				ast.Inspect(r, func(n ast.Node) bool {
					call, ok := n.(*ast.CallExpr)
					if !ok {
						return true
					}
					for _, a := range call.Args {
						if u, ok := unparen(a).(*ast.UnaryExpr); ok && u.Op == token.AND {
							if id, ok := unparen(u.X).(*ast.Ident); ok && bare[id.Name] {
								t.Errorf("%s: return hands back %s beside a call given &%s; the order of the two is unspecified: call first, then return", fset.Position(ret.Pos()), id.Name, id.Name)
							}
						}
					}
					return true
				})
			}
			return true
		})
	}
}

func unparen(e ast.Expr) ast.Expr {
	for {
		p, ok := e.(*ast.ParenExpr)
		if !ok {
			return e
		}
		e = p.X
	}
}

// TestBinaryDeps keeps the test labs out of the tube binary: they start
// namespaces, coturn and throwaway daemons, and belong to tests only.
func TestBinaryDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/tubes-dev/tubes/cmd/tube").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "github.com/tubes-dev/tubes/cli") {
		t.Fatalf("go list -deps of the binary lacks the cli package: %q", deps)
	}
	for _, lab := range []string{"internal/netns", "internal/turntest", "internal/tubetest", "internal/testenv"} {
		if slices.Contains(deps, "github.com/tubes-dev/tubes/"+lab) {
			t.Errorf("the tube binary links %s, a test lab", lab)
		}
	}
}
