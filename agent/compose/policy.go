package compose

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/stagely-dev/stagely/agent/protocol"
)

// Violation is one thing a compose file asks for that the policy forbids.
type Violation struct {
	// File is the compose file, as the repository names it, that sets the
	// key; Line is where (0 when it came through extends or include).
	File string
	Line int
	// Service is empty for a top-level key.
	Service string
	// Key is the compose key, dotted below the service ("build.context").
	Key string
	// Value is what was asked for.
	Value string
	// Allow is the policy flag that would allow it.
	Allow string
}

// Error implements error.
func (v Violation) Error() string {
	where := v.File
	if v.Line > 0 {
		where = fmt.Sprintf("%s:%d", v.File, v.Line)
	}
	subject := fmt.Sprintf("service %q", v.Service)
	if v.Service == "" {
		subject = "top level"
	}
	return fmt.Sprintf("%s: %s: %s: %s is not allowed (policy %s is off)", where, subject, v.Key, v.Value, v.Allow)
}

// PolicyError lists every violation found, in file order.
type PolicyError struct {
	Violations []Violation
}

// Error implements error.
func (e *PolicyError) Error() string {
	lines := make([]string, len(e.Violations))
	for i, v := range e.Violations {
		lines[i] = v.Error()
	}
	return "compose file refused by policy:\n" + strings.Join(lines, "\n")
}

// dockerSockets are the socket's usual paths; binding one of them or a
// directory above them hands the containers the host.
var dockerSockets = []string{"/var/run/docker.sock", "/run/docker.sock"}

// Check returns a *PolicyError listing what the project asks for that pol
// does not allow, or nil.
func Check(p *Project, pol protocol.Policy) error {
	c := checker{p: p, pol: pol}
	all := map[string]types.ServiceConfig{}
	for n, s := range p.Model.Services {
		all[n] = s
	}
	for n, s := range p.Model.DisabledServices {
		all[n] = s
	}
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c.service(n, all[n])
	}
	jobs := p.Model.AllJobs()
	names = names[:0]
	for n := range jobs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c.job(n, jobs[n])
	}
	c.topLevel()
	if len(c.found) == 0 {
		return nil
	}
	sort.SliceStable(c.found, func(i, j int) bool {
		a, b := c.found[i], c.found[j]
		if a.File != b.File {
			return c.fileIndex(a.File) < c.fileIndex(b.File)
		}
		return a.Line < b.Line
	})
	return &PolicyError{Violations: c.found}
}

type checker struct {
	p     *Project
	pol   protocol.Policy
	found []Violation
}

func (c *checker) fileIndex(name string) int {
	for i, r := range c.p.raw {
		if r.name == name {
			return i
		}
	}
	return len(c.p.raw)
}

// refuse records a violation of a service key (or top-level key when
// service is "") located at keys in the raw files.
func (c *checker) refuse(service, key, value, allow string, keys ...string) {
	file, line := c.p.locate(keys...)
	c.found = append(c.found, Violation{File: file, Line: line, Service: service, Key: key, Value: value, Allow: allow})
}

func (c *checker) service(name string, s types.ServiceConfig) {
	at := func(k ...string) []string { return append([]string{"services", name}, k...) }
	c.container(name, "", s.ContainerSpec, s.Build, at)
	// A pre_start hook is a container of its own; post_start and pre_stop
	// hooks are commands run in the service's container, with every
	// privilege if they ask.
	for i, h := range s.PreStart {
		c.container(name, fmt.Sprintf("pre_start[%d].", i), h.ContainerSpec, nil, func(...string) []string { return at("pre_start") })
	}
	for _, hooks := range []struct {
		key  string
		list []types.ServiceHook
	}{{"post_start", s.PostStart}, {"pre_stop", s.PreStop}} {
		for i, h := range hooks.list {
			if h.Privileged && !c.pol.AllowPrivileged {
				c.refuse(name, fmt.Sprintf("%s[%d].privileged", hooks.key, i), "true", "allow_privileged", at(hooks.key)...)
			}
		}
	}
}

// job checks a top-level job, a container run to completion.
func (c *checker) job(name string, j types.JobConfig) {
	at := func(k ...string) []string { return append([]string{"jobs", name}, k...) }
	c.container("", "jobs."+name+".", j.ContainerSpec, j.Build, at)
}

// container checks what one container, and the build of its image, ask
// for. name is its service, "" for a job; prefix goes before every key.
func (c *checker) container(name, prefix string, s types.ContainerSpec, b *types.BuildConfig, at func(k ...string) []string) {
	if s.Privileged && !c.pol.AllowPrivileged {
		c.refuse(name, prefix+"privileged", "true", "allow_privileged", at("privileged")...)
	}
	for _, capability := range s.CapAdd {
		if capName := strings.TrimPrefix(strings.ToUpper(capability), "CAP_"); hostCapabilities[capName] && !c.pol.AllowPrivileged {
			c.refuse(name, prefix+"cap_add", capability, "allow_privileged", at("cap_add")...)
		}
	}
	for _, opt := range s.SecurityOpt {
		if unconfined(opt) && !c.pol.AllowPrivileged {
			c.refuse(name, prefix+"security_opt", opt, "allow_privileged", at("security_opt")...)
		}
	}
	if len(s.Devices) > 0 && !c.pol.AllowPrivileged {
		c.refuse(name, prefix+"devices", s.Devices[0].Source, "allow_privileged", at("devices")...)
	}
	// A rule lets the container use the devices it names, and root in a
	// container may create their nodes (CAP_MKNOD is a default): the
	// host's disks are then one mknod away.
	if len(s.DeviceCgroupRules) > 0 && !c.pol.AllowPrivileged {
		c.refuse(name, prefix+"device_cgroup_rules", s.DeviceCgroupRules[0], "allow_privileged", at("device_cgroup_rules")...)
	}
	if s.NetworkMode == "host" && !c.pol.AllowHostNetwork {
		c.refuse(name, prefix+"network_mode", "host", "allow_host_network", at("network_mode")...)
	}
	c.hostNetworks(name, prefix, s.Networks, at("networks"))
	for _, ns := range []struct{ key, val string }{
		{"pid", s.Pid}, {"ipc", s.Ipc}, {"uts", s.Uts}, {"userns_mode", s.UserNSMode}, {"cgroup", s.Cgroup},
	} {
		if ns.val == "host" && !c.pol.AllowHostNamespaces {
			c.refuse(name, prefix+ns.key, "host", "allow_host_namespaces", at(ns.key)...)
		}
	}
	for _, v := range s.Volumes {
		if v.Type != types.VolumeTypeBind {
			continue
		}
		c.mount(name, prefix+"volumes", v.Source, at("volumes"))
	}
	for _, f := range s.EnvFiles {
		c.hostPath(name, prefix+"env_file", f.Path, at("env_file"))
	}
	if b != nil {
		if b.Privileged && !c.pol.AllowPrivileged {
			c.refuse(name, prefix+"build.privileged", "true", "allow_privileged", at("build", "privileged")...)
		}
		if b.Network == "host" && !c.pol.AllowHostNetwork {
			c.refuse(name, prefix+"build.network", "host", "allow_host_network", at("build", "network")...)
		}
		// An entitlement lets the Dockerfile's RUN steps ask for the same:
		// RUN --network=host, RUN --security=insecure (privileged).
		for _, e := range b.Entitlements {
			switch {
			case e == "network.host" && !c.pol.AllowHostNetwork:
				c.refuse(name, prefix+"build.entitlements", e, "allow_host_network", at("build", "entitlements")...)
			case e == "security.insecure" && !c.pol.AllowPrivileged:
				c.refuse(name, prefix+"build.entitlements", e, "allow_privileged", at("build", "entitlements")...)
			}
		}
		if isHostPath(b.Context) && !c.hostPath(name, prefix+"build.context", b.Context, at("build")) {
			if df := b.Dockerfile; df != "" {
				if !filepath.IsAbs(df) {
					df = filepath.Join(b.Context, df)
				}
				c.hostPath(name, prefix+"build.dockerfile", df, at("build"))
			}
		}
		// A key file is read on the host and handed to the build as an
		// SSH agent.
		for _, key := range b.SSH {
			if key.Path != "" {
				c.hostPath(name, prefix+"build.ssh."+key.ID, key.Path, at("build", "ssh"))
			}
		}
		for k, ctxPath := range b.AdditionalContexts {
			if isHostPath(ctxPath) {
				c.hostPath(name, prefix+"build.additional_contexts."+k, ctxPath, at("build", "additional_contexts"))
			}
		}
	}
}

// hostNetworks refuses the networks of a service that are the engine's
// "host" network: Compose runs a service in its first network's mode, so
// an external network named host is network_mode: host by another name.
func (c *checker) hostNetworks(service, prefix string, networks map[string]*types.ServiceNetworkConfig, keys []string) {
	names := make([]string, 0, len(networks))
	for n := range networks {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if c.p.Model.Networks[n].Name == "host" && !c.pol.AllowHostNetwork {
			c.refuse(service, prefix+"networks", n+" (the host network)", "allow_host_network", keys...)
		}
	}
}

// mount refuses a bind mount of the Docker socket (or a directory above
// it) and of any other host path outside the repository.
func (c *checker) mount(service, key, path string, keys []string) {
	clean := filepath.Clean(path)
	for _, sock := range dockerSockets {
		if within(clean, sock) && !c.pol.AllowDockerSocket {
			c.refuse(service, key, fmt.Sprintf("%s (the Docker socket)", path), "allow_docker_socket", keys...)
			return
		}
	}
	c.hostPath(service, key, path, keys)
}

// hostPath refuses a host path outside the repository and reports whether
// it did.
func (c *checker) hostPath(service, key, path string, keys []string) bool {
	if path == "" || within(c.p.Root, path) || c.pol.AllowHostMounts {
		return false
	}
	c.refuse(service, key, fmt.Sprintf("%s (outside the repository)", path), "allow_host_mounts", keys...)
	return true
}

func (c *checker) topLevel() {
	files := func(kind string, m map[string]types.FileObjectConfig) {
		names := make([]string, 0, len(m))
		for n := range m {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			if f := m[n].File; f != "" {
				c.hostPath("", kind+"."+n+".file", f, []string{kind, n, "file"})
			}
		}
	}
	secrets := map[string]types.FileObjectConfig{}
	for n, s := range c.p.Model.Secrets {
		secrets[n] = types.FileObjectConfig(s)
	}
	configs := map[string]types.FileObjectConfig{}
	for n, s := range c.p.Model.Configs {
		configs[n] = types.FileObjectConfig(s)
	}
	files("secrets", secrets)
	files("configs", configs)

	names := make([]string, 0, len(c.p.Model.Volumes))
	for n := range c.p.Model.Volumes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		// A local volume mounts its device with the type and options
		// given: with o=bind the device is a host path; with any type but
		// a memory or network one it is the host's disk, or (overlay)
		// host directories named in the options.
		opts := c.p.Model.Volumes[n].DriverOpts
		dev := opts["device"]
		keys := []string{"volumes", n, "driver_opts"}
		switch {
		case dev == "":
		case strings.Contains(opts["o"], "bind"):
			path := dev
			if !filepath.IsAbs(path) {
				path = filepath.Join(filepath.Dir(c.p.Files[0]), path)
			}
			c.mount("", "volumes."+n+".driver_opts.device", path, keys)
		case !hostlessMounts[opts["type"]] && !c.pol.AllowHostMounts:
			c.refuse("", "volumes."+n+".driver_opts", fmt.Sprintf("type %s of %s (a host mount)", opts["type"], dev), "allow_host_mounts", keys...)
		}
	}
}

// hostlessMounts are the volume mount types that take nothing of the
// host's: memory, or a share on another machine.
var hostlessMounts = map[string]bool{"tmpfs": true, "nfs": true, "nfs4": true, "cifs": true}

// isHostPath tells a local path from a remote build context (a git or
// HTTP URL) or a reference to another service or image.
func isHostPath(s string) bool {
	return filepath.IsAbs(s)
}

// hostCapabilities are the capabilities that reach past the container to
// the machine: load kernel modules, read any file by handle, trace or
// write raw memory and I/O, load BPF programs, set the clock, reboot, or
// change the security modules' rules. With any of them a container is as
// good as privileged.
var hostCapabilities = map[string]bool{
	"ALL": true, "SYS_ADMIN": true, "SYS_MODULE": true, "SYS_RAWIO": true, "SYS_PTRACE": true,
	"DAC_READ_SEARCH": true, "BPF": true, "PERFMON": true, "SYS_TIME": true, "SYS_BOOT": true,
	"MAC_ADMIN": true, "MAC_OVERRIDE": true, "SYSLOG": true,
}

// unconfined reports whether a security_opt turns off one of the
// confinements the engine puts on every container: the seccomp filter,
// the AppArmor or SELinux profile, or the masking of /proc and /sys
// (through which /proc/sys/kernel/core_pattern runs a program on the host).
func unconfined(opt string) bool {
	k, v, ok := strings.Cut(opt, "=")
	if !ok {
		k, v, _ = strings.Cut(opt, ":")
	}
	k, v = strings.ToLower(strings.TrimSpace(k)), strings.ToLower(strings.TrimSpace(v))
	switch k {
	case "seccomp", "apparmor", "systempaths":
		return v == "unconfined"
	case "label":
		return v == "disable" || v == "disabled"
	}
	return false
}
