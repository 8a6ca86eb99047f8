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

// The logging a service gets when it sets none. The engine's default,
// json-file with no size limit, lets a chatty preview that runs for days
// fill its machine's disk. Three files of 10 MB keep the last hundred
// thousand lines or more, plenty to debug from (the agent streams them to
// the server as they come too), and a dozen containers then take a few
// hundred MB at most of a disk that may be 8 GiB. The driver is named
// because the engine's default may be one (journald, syslog) that refuses
// these options; json-file is the one every tool reads, `docker logs` and
// the agent's log following included.
const (
	logDriver   = "json-file"
	logMaxSize  = "10m"
	logMaxFiles = "3"
)

// Override renders the override file for the project: for every service,
// published ports reset (`ports: !reset []`, Compose 2.24.4 and later), the
// Stagely labels on its containers and, when it builds, on its image,
// envFile (an absolute path) added to its env_file list and, unless the
// service sets its own `logging:`, bounded logging.
func Override(p *Project, env, envFile string) ([]byte, error) {
	labels := mapping(LabelManaged, "true", LabelEnvironment, env)
	names := make([]string, 0, len(p.Model.Services)+len(p.Model.DisabledServices))
	builds, ownLogging := map[string]bool{}, map[string]bool{}
	for n, s := range p.Model.Services {
		names = append(names, n)
		builds[n], ownLogging[n] = s.Build != nil, s.Logging != nil
	}
	for n, s := range p.Model.DisabledServices {
		names = append(names, n)
		builds[n], ownLogging[n] = s.Build != nil, s.Logging != nil
	}
	sort.Strings(names)
	logging := &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
		scalar("driver"), scalar(logDriver),
		scalar("options"), mapping("max-size", logMaxSize, "max-file", logMaxFiles),
	}}

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
		if !ownLogging[n] {
			svc.Content = append(svc.Content, scalar("logging"), logging)
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
