package action

import (
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"
)

// Input describes one action input as action.yml declares it. action.yml is
// the single source: the binary embeds it for defaults and command-line
// flags, and a test keeps the README's table equal to it.
type Input struct {
	Name        string
	Default     string // the binary's default; "" where action.yml uses an expression
	Declared    string // the default exactly as action.yml writes it
	Description string
	Required    bool
}

// Metadata is the parsed action.yml.
type Metadata struct {
	Inputs  []Input
	Outputs []Output
}

// Output describes one action output.
type Output struct {
	Name        string
	Description string
}

// secretInputs are never offered as command-line flags.
var secretInputs = map[string]bool{"password": true, "mirror-password": true, "ssh-key": true, "ssh-key-passphrase": true, "kubeconfig": true}

// ParseMetadata reads action.yml, keeping its order.
func ParseMetadata(data []byte) (Metadata, error) {
	var doc struct {
		Inputs  yaml.Node `yaml:"inputs"`
		Outputs yaml.Node `yaml:"outputs"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return Metadata{}, fmt.Errorf("action.yml: %w", err)
	}
	var md Metadata
	for i := 0; i+1 < len(doc.Inputs.Content); i += 2 {
		var in struct {
			Description string `yaml:"description"`
			Default     string `yaml:"default"`
			Required    bool   `yaml:"required"`
		}
		if err := doc.Inputs.Content[i+1].Decode(&in); err != nil {
			return Metadata{}, fmt.Errorf("action.yml input %s: %w", doc.Inputs.Content[i].Value, err)
		}
		def := in.Default
		if strings.Contains(def, "${{") {
			// The runner evaluates expressions; outside Actions there is
			// no github context, so the binary's default is empty.
			def = ""
		}
		md.Inputs = append(md.Inputs, Input{Name: doc.Inputs.Content[i].Value, Default: def, Declared: in.Default, Description: in.Description, Required: in.Required})
	}
	for i := 0; i+1 < len(doc.Outputs.Content); i += 2 {
		var out struct {
			Description string `yaml:"description"`
		}
		if err := doc.Outputs.Content[i+1].Decode(&out); err != nil {
			return Metadata{}, fmt.Errorf("action.yml output %s: %w", doc.Outputs.Content[i].Value, err)
		}
		md.Outputs = append(md.Outputs, Output{Name: doc.Outputs.Content[i].Value, Description: out.Description})
	}
	return md, nil
}

// Default returns an input's default, "" for unknown names.
func (m Metadata) Default(name string) string {
	for _, in := range m.Inputs {
		if in.Name == name {
			return in.Default
		}
	}
	return ""
}
