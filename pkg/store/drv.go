package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"

	"github.com/storepkg/storepkg/pkg/storepath"
)

// drvOutput is one entry of a derivation's output list.
type drvOutput struct {
	name, path string
}

// addDerivationOutputs records the outputs of the derivation p (row id)
// in DerivationOutputs, as Nix's addValidPath does. Outputs without a
// fixed path (floating content-addressed, deferred) are left out, as Nix
// leaves them out.
func (s *Store) addDerivationOutputs(ctx context.Context, tx *sql.Conn, p storepath.Path, id int64) error {
	file := s.RealPath(p)
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("store: register %s: reading derivation: %w", p.Absolute(), err)
	}
	outs, err := parseDrvOutputs(b)
	if err != nil {
		return fmt.Errorf("store: register %s: parsing derivation %s: %w", p.Absolute(), file, err)
	}
	for _, o := range outs {
		if o.path == "" {
			continue
		}
		if _, err := storepath.Parse(o.path); err != nil {
			return fmt.Errorf("store: register %s: output %q: %w", p.Absolute(), o.name, err)
		}
		if _, err := tx.ExecContext(ctx,
			`insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?)`,
			id, o.name, o.path); err != nil {
			return fmt.Errorf("store: register %s: output %q: %w", p.Absolute(), o.name, err)
		}
	}
	return nil
}

// parseDrvOutputs reads the output list at the start of a derivation in
// ATerm form: Derive([("out","/nix/store/…","",""),…],…). Only that list
// is needed here.
func parseDrvOutputs(b []byte) ([]drvOutput, error) {
	p := atermParser{b: b}
	if err := p.expect("Derive(["); err != nil {
		return nil, err
	}
	var outs []drvOutput
	if p.peek() == ']' {
		return nil, nil
	}
	for {
		if err := p.expect("("); err != nil {
			return nil, err
		}
		var f [4]string
		for i := range f {
			if i > 0 {
				if err := p.expect(","); err != nil {
					return nil, err
				}
			}
			s, err := p.str()
			if err != nil {
				return nil, err
			}
			f[i] = s
		}
		if err := p.expect(")"); err != nil {
			return nil, err
		}
		outs = append(outs, drvOutput{name: f[0], path: f[1]})
		switch p.next() {
		case ',':
		case ']':
			return outs, nil
		default:
			return nil, fmt.Errorf("offset %d: want ',' or ']' in output list", p.i-1)
		}
	}
}

type atermParser struct {
	b []byte
	i int
}

func (p *atermParser) peek() byte {
	if p.i >= len(p.b) {
		return 0
	}
	return p.b[p.i]
}

func (p *atermParser) next() byte {
	c := p.peek()
	p.i++
	return c
}

func (p *atermParser) expect(lit string) error {
	if len(p.b)-p.i < len(lit) || string(p.b[p.i:p.i+len(lit)]) != lit {
		return fmt.Errorf("offset %d: want %q", p.i, lit)
	}
	p.i += len(lit)
	return nil
}

// str reads a quoted string with Nix's escapes (\n \r \t, and \x for
// any other x).
func (p *atermParser) str() (string, error) {
	if p.next() != '"' {
		return "", fmt.Errorf("offset %d: want '\"'", p.i-1)
	}
	var out []byte
	for {
		if p.i >= len(p.b) {
			return "", errors.New("unterminated string")
		}
		c := p.next()
		switch c {
		case '"':
			return string(out), nil
		case '\\':
			if p.i >= len(p.b) {
				return "", errors.New("unterminated string")
			}
			switch e := p.next(); e {
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			default:
				out = append(out, e)
			}
		default:
			out = append(out, c)
		}
	}
}
