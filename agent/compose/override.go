package compose

import (
	"fmt"
	"sort"

	"gopkg.in/yaml.v3"
)

// Labels the override puts on every container and every built image of a
// project, so the agent (and an operator) can find all of it.
const (
	LabelManaged     = "dev.stagely.managed"
	LabelEnvironment = "dev.stagely.environment"
)

// Override renders the override file for the project: for every service,
// published ports reset (`ports: !reset []`, Compose 2.24.4 and later), the
// Stagely labels on its containers and, when it builds, on its image, and
// envFile (an absolute path) added to its env_file list.
func Override(p *Project, env, envFile string) ([]byte, error) {
	labels := mapping(LabelManaged, "true", LabelEnvironment, env)
	names := make([]string, 0, len(p.Model.Services)+len(p.Model.DisabledServices))
	builds := map[string]bool{}
	for n, s := range p.Model.Services {
		names = append(names, n)
		builds[n] = s.Build != nil
	}
	for n, s := range p.Model.DisabledServices {
		names = append(names, n)
		builds[n] = s.Build != nil
	}
	sort.Strings(names)

	services := &yaml.Node{Kind: yaml.MappingNode}
	for _, n := range names {
		svc := &yaml.Node{Kind: yaml.MappingNode}
		svc.Content = append(svc.Content,
			scalar("ports"), &yaml.Node{Kind: yaml.SequenceNode, Tag: "!reset", Style: yaml.FlowStyle},
			scalar("labels"), labels,
		)
		if envFile != "" {
			svc.Content = append(svc.Content,
				scalar("env_file"), &yaml.Node{Kind: yaml.SequenceNode, Content: []*yaml.Node{scalar(envFile)}})
		}
		if builds[n] {
			svc.Content = append(svc.Content,
				scalar("build"), &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{scalar("labels"), labels}})
		}
		services.Content = append(services.Content, scalar(n), svc)
	}
	doc := &yaml.Node{Kind: yaml.DocumentNode, HeadComment: "Written by the Stagely agent for project " + p.Name + "; do not edit.",
		Content: []*yaml.Node{{Kind: yaml.MappingNode, Content: []*yaml.Node{scalar("services"), services}}}}
	b, err := yaml.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("render override for %s: %w", p.Name, err)
	}
	return b, nil
}

func scalar(s string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}
}

// mapping builds a mapping of string pairs.
func mapping(kv ...string) *yaml.Node {
	m := &yaml.Node{Kind: yaml.MappingNode}
	for i := 0; i+1 < len(kv); i += 2 {
		m.Content = append(m.Content, scalar(kv[i]), scalar(kv[i+1]))
	}
	return m
}
