package e2e

import (
	"strconv"
	"strings"
	"testing"
)

// Rootless Podman reached as its unprivileged user: remote-runtime auto
// finds /run/user/<uid>/podman/podman.sock after the rootful sockets.
func TestRootlessPodman(t *testing.T) {
	e := Start(t)
	e.Front.AddUser("deployer", canary, false, "acme/rl-private")
	r := StartRemoteHost(t, "rl", HostSpec{Kind: WithRootlessPodman})
	s := sshRun{e: e, regAddr: r.ExposeOnHost(t, e.Host)}
	digest := pushNodeImage(t, e, "acme/rl-private", "1", 64<<10, 2)
	pubDigest := pushNodeImage(t, e, "acme/rl-public", "1", 64<<10, 1)
	e.Front.SetPublic("acme/rl-public")
	userSocket := "/run/user/" + strconv.Itoa(r.rootless.uid) + "/podman/podman.sock"

	t.Run("private image into the user's Podman, found by auto", func(t *testing.T) {
		ref := s.regAddr + "/acme/rl-private:1"
		res := e.RunAction(t, s.inputs("acme/rl-private", r))
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s\n%s", res.ExitCode, res.Stdout, lastLinesOf(r.PodmanLog(), 10))
		}
		if !contains(podmanHas(t, r, ref), s.regAddr+"/acme/rl-private@"+digest) {
			t.Errorf("the user's Podman has %s at %v, want %s", ref, podmanHas(t, r, ref), digest)
		}
		rr := results(t, res)[0]
		if rr["host"] != r.Addr() || rr["runtime"] != "podman" || rr["auth_mode"] != "token" || rr["pulled"] != true || rr["digest"] != digest {
			t.Errorf("result = %v", rr)
		}
		// One command ran, as the user: the uid for the runtime directory.
		if cmds := r.Commands(); len(cmds) != 1 || !strings.Contains(cmds[0], "id -u") {
			t.Errorf("commands on the host: %q", cmds)
		}
		assertNoSecretLeak(t, res, canary)
		res = e.RunAction(t, s.inputs("acme/rl-private", r))
		if rs := results(t, res); res.ExitCode != 0 || rs[0]["pulled"] != false {
			t.Errorf("second pull: exit %d, results %v", res.ExitCode, rs)
		}
	})

	t.Run("rejected credentials on a public repository fall back", func(t *testing.T) {
		in := s.inputs("acme/rl-public", r)
		in["password"] = "wrong-" + canary
		res := e.RunAction(t, in)
		rr := results(t, res)[0]
		if res.ExitCode != 0 || rr["runtime"] != "podman" || rr["fallback_used"] != true || rr["auth_mode"] != "anonymous" || rr["digest"] != pubDigest {
			t.Errorf("exit %d, result %v\n%s", res.ExitCode, rr, res.Stdout)
		}
	})

	t.Run("the host holds no copy of the secret", func(t *testing.T) {
		checkNoSecretOnHost(t, r)
	})

	t.Run("no runtime answers: every socket tried is named", func(t *testing.T) {
		r.stopPodman()
		res := e.RunAction(t, s.inputs("acme/rl-public", r))
		for _, want := range []string{"/var/run/docker.sock", "/run/podman/podman.sock", "/run/user/" + strconv.Itoa(r.rootless.uid) + "/docker.sock", userSocket, "/run/containerd/containerd.sock"} {
			if !strings.Contains(res.Stdout, want) {
				t.Errorf("the error does not name %s:\n%s", want, res.Stdout)
			}
		}
		if res.ExitCode != 1 {
			t.Errorf("exit %d, want 1", res.ExitCode)
		}
	})
}

// Rootless Docker reached as its unprivileged user: auto finds
// /run/user/<uid>/docker.sock; the daemon gets the registry token.
func TestRootlessDocker(t *testing.T) {
	e := Start(t)
	e.Front.AddUser("deployer", canary, false, "acme/rld-private")
	r := StartRemoteHost(t, "rld", HostSpec{Kind: WithRootlessDocker})
	s := sshRun{e: e, regAddr: r.ExposeOnHost(t, e.Host)}
	digest := pushNodeImage(t, e, "acme/rld-private", "1", 64<<10, 2)

	ref := s.regAddr + "/acme/rld-private:1"
	res := e.RunAction(t, s.inputs("acme/rld-private", r))
	if res.ExitCode != 0 {
		t.Fatalf("exit %d\n%s\n%s", res.ExitCode, res.Stdout, lastLinesOf(r.readLog("dockerd.log", 0), 10))
	}
	if !contains(remoteHas(t, r, ref), s.regAddr+"/acme/rld-private@"+digest) {
		t.Errorf("the user's dockerd has %s at %v, want %s", ref, remoteHas(t, r, ref), digest)
	}
	rr := results(t, res)[0]
	if rr["host"] != r.Addr() || rr["runtime"] != "docker" || rr["auth_mode"] != "token" || rr["pulled"] != true || rr["digest"] != digest {
		t.Errorf("result = %v", rr)
	}
	if cmds := r.Commands(); len(cmds) != 1 || !strings.Contains(cmds[0], "id -u") {
		t.Errorf("commands on the host: %q", cmds)
	}
	assertNoSecretLeak(t, res, canary)
	res = e.RunAction(t, s.inputs("acme/rld-private", r))
	if rs := results(t, res); res.ExitCode != 0 || rs[0]["pulled"] != false {
		t.Errorf("second pull: exit %d, results %v", res.ExitCode, rs)
	}
	needles := secretForms("deployer", canary)
	if found := r.FindInFiles(needles...); len(found) > 0 {
		t.Errorf("secret found on the host: %v", found)
	}
}
