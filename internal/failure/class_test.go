package failure

import (
	"errors"
	"fmt"
	"testing"
)

type selfNamed struct{}

func (selfNamed) Error() string { return "tag moved" }
func (selfNamed) Class() string { return "drift" }

func TestClassOf(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{&Rejected{Response: Response{Status: 401}}, "rejected"},
		{&Rejected{Response: Response{Status: 401}, Anonymous: true}, "anonymous-denied"},
		{fmt.Errorf("pulling: %w", &NotFound{}), "not-found"},
		{&Transient{}, "transient"},
		{Bad("platform", "", ""), "bad-input:platform"},
		{fmt.Errorf("on host-a: %w", selfNamed{}), "drift"},
		{errors.New("disk full"), "other"},
	} {
		if got := ClassOf(tt.err); got != tt.want {
			t.Errorf("ClassOf(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}
