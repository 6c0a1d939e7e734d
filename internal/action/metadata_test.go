package action

import (
	"os"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// action.yml is what the runner and the Marketplace read: complete metadata,
// every input with a description and an explicit default (or required), a
// container action built from the Dockerfile on this branch (the release
// workflow rewrites runs.image to the published digest on the tag).
func TestActionYAMLIsComplete(t *testing.T) {
	data, err := os.ReadFile("../../action.yml")
	if err != nil {
		t.Fatal(err)
	}
	var md struct {
		Name, Description, Author string
		Branding                  struct{ Icon, Color string }
		Inputs                    map[string]map[string]any
		Outputs                   map[string]map[string]any
		Runs                      struct{ Using, Image string }
	}
	if err := yaml.Unmarshal(data, &md); err != nil {
		t.Fatal(err)
	}
	for field, v := range map[string]string{"name": md.Name, "description": md.Description, "author": md.Author,
		"branding.icon": md.Branding.Icon, "branding.color": md.Branding.Color} {
		if strings.TrimSpace(v) == "" {
			t.Errorf("action.yml has no %s", field)
		}
	}
	if md.Runs.Using != "docker" || md.Runs.Image != "Dockerfile" {
		t.Errorf("runs = %+v, want using: docker, image: Dockerfile", md.Runs)
	}
	if !strings.Contains(string(data), "\n  image: Dockerfile\n") {
		t.Errorf("release.yml rewrites the line '  image: Dockerfile'; action.yml lacks it")
	}
	for name, in := range md.Inputs {
		if d, _ := in["description"].(string); strings.TrimSpace(d) == "" {
			t.Errorf("input %s has no description", name)
		}
		_, hasDefault := in["default"]
		if req, _ := in["required"].(bool); !req && !hasDefault {
			t.Errorf("input %s is optional but states no default", name)
		}
	}
	for name, out := range md.Outputs {
		if d, _ := out["description"].(string); strings.TrimSpace(d) == "" {
			t.Errorf("output %s has no description", name)
		}
	}
}
