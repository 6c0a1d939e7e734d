package registryauth

import (
	"fmt"
	"strings"
	"testing"
)

func TestCredentialsNeverPrintSecret(t *testing.T) {
	c := Credentials{Mode: ModeToken, Username: "u", Password: "s3cr3t-canary"}
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c, c, c, c)} {
		if strings.Contains(s, "s3cr3t-canary") {
			t.Errorf("secret printed: %s", s)
		}
	}
}
