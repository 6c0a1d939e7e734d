package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Cluster is a single-node Kubernetes cluster of this test process: etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler and a kubelet on
// a private containerd (its own root, state and socket), all in the
// machine's network namespace so the node pulls from the suite's loopback
// registry. Pods run with hostNetwork (no CNI). It starts once per process
// and stops in Shutdown, restoring what the kubelet changes on the machine.
type Cluster struct {
	Dir        string
	Server     string
	AdminToken string
	// DeployerToken authenticates DeployerUser, who belongs to no group
	// and is granted nothing: tests bind it to the role they mean.
	DeployerToken string
	// Node is the real node's name.
	Node    string
	Client  kubernetes.Interface
	Started time.Duration // from the first process to the node Ready
	// Keyless is what the API server trusts besides its token file: EKS
	// tokens through a webhook, the fake Actions issuer's ID tokens.
	Keyless *Keyless

	procs      []*hostProcess
	containerd *hostProcess
	sock       string
	before     hostState
}

// DeployerUser is the name DeployerToken authenticates.
const DeployerUser = "ghcr-pull-deployer"

var (
	clusterOnce sync.Once
	cluster     *Cluster
	clusterErr  error
)

// StartCluster returns the shared cluster, building and starting it on first use.
func StartCluster(tb testing.TB) *Cluster {
	tb.Helper()
	e := Start(tb)
	bin := kubeBin(tb)
	clusterOnce.Do(func() {
		cluster, clusterErr = startCluster(e, bin)
		if cluster != nil {
			stoppers = append(stoppers, cluster.stop)
		}
	})
	if clusterErr != nil {
		skipOrFatal(tb, "kubernetes cluster did not start: %v", clusterErr)
	}
	return cluster
}

// Kubeconfig is a kubeconfig for the cluster with token auth (the admin's
// token is AdminToken), held in memory as the action receives it.
func (c *Cluster) Kubeconfig(token string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: %s
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
`, c.Server, token)
}

func (c *Cluster) log(name string) string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, name+".log"))
	return string(b)
}

func (c *Cluster) start(bin, logName string, args ...string) (*hostProcess, error) {
	return startProcess(filepath.Join(c.Dir, logName+".log"), bin, args...)
}

func startCluster(e *Env, bin string) (*Cluster, error) {
	t0 := time.Now()
	dir, err := os.MkdirTemp("", "ghcr-pull-kube-")
	if err != nil {
		return nil, err
	}
	ownPath(dir)
	c := &Cluster{Dir: dir, AdminToken: randomHex(16), DeployerToken: randomHex(16), Node: "e2e-node", before: saveHostState()}
	ports := make([]int, 6)
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return c, err
		}
	}
	c.Server = fmt.Sprintf("https://127.0.0.1:%d", ports[2])
	pause, err := pushPauseImage(e)
	if err != nil {
		return c, err
	}
	for _, d := range []string{"etcd", "pki", "kubelet", "pod-logs", "containerd/certs.d", "containerd/cni/bin", "containerd/cni/net.d", "containerd/tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return c, err
		}
	}
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	saKey := filepath.Join(dir, "pki", "sa.key")
	tokens := filepath.Join(dir, "pki", "tokens.csv")
	kcfg := filepath.Join(dir, "admin.kubeconfig")
	for f, data := range map[string]string{
		saKey:  string(keyPEM),
		tokens: fmt.Sprintf("%s,admin,admin,system:masters\n%s,%s,deployer\n", c.AdminToken, c.DeployerToken, DeployerUser),
		kcfg:   c.Kubeconfig(c.AdminToken),
	} {
		if err := os.WriteFile(f, []byte(data), 0o600); err != nil {
			return c, err
		}
	}

	kl, authArgs, err := startKeyless(dir)
	c.Keyless = kl
	if err != nil {
		return c, err
	}

	// containerd first (it takes the longest to answer), then the
	// control plane, then the kubelet.
	c.sock = filepath.Join(dir, "containerd.sock")
	hostsDir := filepath.Join(dir, "containerd", "certs.d", e.Host)
	_ = os.MkdirAll(hostsDir, 0o700)
	_ = os.WriteFile(filepath.Join(hostsDir, "hosts.toml"), []byte(fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+e.Host, "http://"+e.Host)), 0o600)
	d := func(p ...string) string { return filepath.Join(append([]string{dir, "containerd"}, p...)...) }
	ccfg := containerdConfig(d, c.sock, containerdPods{sandboxImage: pause})
	// Pods run with hostNetwork, so no CNI plugin is ever called; but the
	// kubelet keeps a node NotReady until the runtime reports a network
	// configuration, so there is one, never used.
	if err := os.WriteFile(d("cni", "net.d", "10-e2e.conflist"), []byte(`{"cniVersion": "0.4.0", "name": "e2e", "plugins": [{"type": "bridge", "bridge": "e2e-unused"}]}`), 0o600); err != nil {
		return c, err
	}
	if err := os.WriteFile(d("config.toml"), []byte(ccfg), 0o600); err != nil {
		return c, err
	}
	// containerd and the kubelet share a mount namespace of their own:
	// whatever either mounts goes with it.
	if c.containerd, err = c.start("unshare", "containerd", "--mount", "--propagation", "private", "--", "env", "TMPDIR="+d("tmp"), "containerd", "--config", d("config.toml")); err != nil {
		return c, err
	}
	c.procs = append(c.procs, c.containerd)

	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	p, err := c.start(filepath.Join(bin, "etcd"), "etcd", "--data-dir", filepath.Join(dir, "etcd"), "--name", "e2e",
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL, "--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer, "--initial-cluster", "e2e="+peer, "--log-level", "warn")
	if err != nil {
		return c, err
	}
	c.procs = append(c.procs, p)
	if p, err = c.start(filepath.Join(bin, "kube-apiserver"), "kube-apiserver", append([]string{"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", fmt.Sprintf("--secure-port=%d", ports[2]),
		"--cert-dir", filepath.Join(dir, "pki"), "--token-auth-file", tokens, "--authorization-mode", "Node,RBAC",
		"--service-account-key-file", saKey, "--service-account-signing-key-file", saKey,
		"--service-account-issuer", "https://kubernetes.default.svc", "--service-cluster-ip-range", "10.96.0.0/24",
		"--enable-priority-and-fairness=false"}, authArgs...)...); err != nil {
		return c, err
	}
	c.procs = append(c.procs, p)
	if p, err = c.start(filepath.Join(bin, "kube-controller-manager"), "kube-controller-manager", "--kubeconfig", kcfg,
		"--leader-elect=false", "--bind-address", "127.0.0.1", fmt.Sprintf("--secure-port=%d", ports[3]),
		"--cert-dir", filepath.Join(dir, "pki"), "--controllers", "*,-nodeipam,-route,-cloud-node-lifecycle,-service-lb-controller",
		"--service-account-private-key-file", saKey, "--use-service-account-credentials=false"); err != nil {
		return c, err
	}
	c.procs = append(c.procs, p)
	if p, err = c.start(filepath.Join(bin, "kube-scheduler"), "kube-scheduler", "--kubeconfig", kcfg,
		"--leader-elect=false", "--bind-address", "127.0.0.1", fmt.Sprintf("--secure-port=%d", ports[4]),
		"--cert-dir", filepath.Join(dir, "pki")); err != nil {
		return c, err
	}
	c.procs = append(c.procs, p)

	rc, err := clientcmd.RESTConfigFromKubeConfig([]byte(c.Kubeconfig(c.AdminToken)))
	if err != nil {
		return c, err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return c, err
	}
	c.Client = cs
	if err := waitUntil(startupWait, 200*time.Millisecond, func() (bool, error) {
		if c.containerd.exited() {
			return false, fmt.Errorf("containerd exited: %s", lastLinesOf(c.log("containerd"), 10))
		}
		_, err := cs.CoreV1().Namespaces().Get(context.Background(), "default", metav1.GetOptions{})
		return err == nil && fileExists(c.sock), nil
	}); err != nil {
		return c, fmt.Errorf("API server not ready: %v; its log ends: %s", err, lastLinesOf(c.log("kube-apiserver"), 15))
	}
	// The JWT authenticator reads the issuer's discovery after the start.
	if err := waitUntil(startupWait, 200*time.Millisecond, func() (bool, error) {
		tr, err := cs.AuthenticationV1().TokenReviews().Create(context.Background(),
			&authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: kl.Issuer.Sign(KubeAudience)}}, metav1.CreateOptions{})
		return err == nil && tr.Status.Authenticated, nil
	}); err != nil {
		return c, fmt.Errorf("the API server does not take the issuer's ID tokens: %v; its log ends: %s", err, lastLinesOf(c.log("kube-apiserver"), 15))
	}

	kubeletCfg := filepath.Join(dir, "kubelet.yaml")
	if err := os.WriteFile(kubeletCfg, []byte(fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://%s
podLogsDir: %s
port: %d
readOnlyPort: 0
healthzPort: 0
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
makeIPTablesUtilChains: false
resolvConf: ""
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "0%%", imagefs.available: "0%%", nodefs.inodesFree: "0%%"}
`, c.sock, filepath.Join(dir, "pod-logs"), ports[5])), 0o600); err != nil {
		return c, err
	}
	if p, err = c.start("nsenter", "kubelet", fmt.Sprintf("--mount=/proc/%d/ns/mnt", c.containerd.cmd.Process.Pid), "--",
		"env", "TMPDIR="+d("tmp"), filepath.Join(bin, "kubelet"), "--config", kubeletCfg, "--kubeconfig", kcfg,
		"--root-dir", filepath.Join(dir, "kubelet"), "--hostname-override", c.Node); err != nil {
		return c, err
	}
	c.procs = append(c.procs, p)
	if err := waitUntil(startupWait, 200*time.Millisecond, func() (bool, error) {
		if p.exited() {
			return false, fmt.Errorf("kubelet exited: %s", lastLinesOf(c.log("kubelet"), 15))
		}
		n, err := cs.CoreV1().Nodes().Get(context.Background(), c.Node, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		return c, fmt.Errorf("node not ready: %v; kubelet errors: %s", err, lastLinesOf(errorLines(c.log("kubelet")), 25))
	}
	c.Started = time.Since(t0)
	return c, nil
}

// pushPauseImage pushes the sandbox image: busybox sleeping, from the
// machine's busybox-static (no base image can be pulled here).
func pushPauseImage(e *Env) (string, error) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return "", fmt.Errorf("busybox not installed (busybox-static)")
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = tw.WriteHeader(&tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755})
	_ = tw.WriteHeader(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(data))})
	_, _ = tw.Write(data)
	_ = tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		return "", err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return "", err
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Entrypoint = []string{"/bin/busybox", "sleep", "2147483647"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return "", err
	}
	ref, err := name.ParseReference(e.Host + "/kube/pause:e2e")
	if err != nil {
		return "", err
	}
	if err := remoteWriteAdmin(e, ref, img); err != nil {
		return "", err
	}
	// containerd pulls the sandbox image without credentials.
	e.Front.SetPublic("kube/pause")
	return ref.String(), nil
}

// stop deletes every pod through the API (the kubelet then stops their
// sandboxes), stops the kubelet, kills what containerd still runs, stops
// the rest and restores the machine's state.
func (c *Cluster) stop() {
	if c.Client != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		zero := int64(0)
		_ = c.Client.CoreV1().Pods("").DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
		nss, _ := c.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if nss != nil {
			for _, ns := range nss.Items {
				_ = c.Client.CoreV1().Pods(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
			}
		}
		cancel()
		_ = waitUntil(20*time.Second, 250*time.Millisecond, func() (bool, error) {
			out, _ := exec.Command("ctr", "--address", c.sock, "-n", "k8s.io", "tasks", "ls", "-q").Output()
			return strings.TrimSpace(string(out)) == "", nil
		})
	}
	// The kubelet (last started) first, containerd (first started) last.
	for i := len(c.procs) - 1; i >= 1; i-- {
		c.procs[i].stop(10 * time.Second)
	}
	if c.sock != "" {
		out, _ := exec.Command("ctr", "--address", c.sock, "-n", "k8s.io", "tasks", "ls", "-q").Output()
		for _, id := range strings.Fields(string(out)) {
			_ = exec.Command("ctr", "--address", c.sock, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id).Run()
			time.Sleep(200 * time.Millisecond)
			_ = exec.Command("ctr", "--address", c.sock, "-n", "k8s.io", "tasks", "delete", "-f", id).Run()
		}
		out, _ = exec.Command("ctr", "--address", c.sock, "-n", "k8s.io", "containers", "ls", "-q").Output()
		for _, id := range strings.Fields(string(out)) {
			_ = exec.Command("ctr", "--address", c.sock, "-n", "k8s.io", "containers", "delete", id).Run()
		}
	}
	if len(c.procs) > 0 {
		c.procs[0].stop(15 * time.Second)
	}
	c.before.restore()
	_ = os.RemoveAll(c.Dir)
	if c.Keyless != nil {
		c.Keyless.Close()
	}
}

func remoteWriteAdmin(e *Env, ref name.Reference, img v1.Image) error {
	return remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: e.AdminUser, Password: e.AdminPassword}))
}

// hostState is what the kubelet changes on the machine, as it was before.
type hostState struct {
	sysctls map[string]string
	chains  map[string]bool // "iptables filter KUBE-X"
	paths   map[string]bool // existed before
}

var kubeletSysctls = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

// kubeletPaths are made by the kubelet whatever its root directory.
var kubeletPaths = []string{"/var/lib/kubelet/device-plugins", "/var/lib/kubelet", "/var/log/containers"}

func saveHostState() hostState {
	s := hostState{sysctls: map[string]string{}, chains: map[string]bool{}, paths: map[string]bool{}}
	for _, k := range kubeletSysctls {
		if b, err := os.ReadFile("/proc/sys/" + k); err == nil {
			s.sysctls[k] = strings.TrimSpace(string(b))
		}
	}
	for _, c := range kubeChains() {
		s.chains[c] = true
	}
	for _, p := range append(append([]string{}, kubeletPaths...), kubepodsCgroups()...) {
		s.paths[p] = true
	}
	for _, p := range kubeletPaths {
		if _, err := os.Stat(p); err != nil {
			delete(s.paths, p)
		}
	}
	return s
}

// kubeChains lists the KUBE-* chains as "tool table chain".
func kubeChains() []string {
	var out []string
	for _, tool := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"filter", "nat", "mangle"} {
			b, err := exec.Command(tool, "-w", "-t", table, "-S").Output()
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(b), "\n") {
				if f := strings.Fields(l); len(f) >= 2 && f[0] == "-N" && strings.HasPrefix(f[1], "KUBE-") {
					out = append(out, tool+" "+table+" "+f[1])
				}
			}
		}
	}
	return out
}

func kubepodsCgroups() []string {
	var out []string
	for _, pat := range []string{"/sys/fs/cgroup/kubepods", "/sys/fs/cgroup/*/kubepods", "/sys/fs/cgroup/kubepods.slice"} {
		m, _ := filepath.Glob(pat)
		out = append(out, m...)
	}
	return out
}

func (s hostState) restore() {
	for k, v := range s.sysctls {
		_ = os.WriteFile("/proc/sys/"+k, []byte(v), 0o644)
	}
	for _, c := range kubeChains() {
		if s.chains[c] {
			continue
		}
		f := strings.Fields(c)
		tool, table, chain := f[0], f[1], f[2]
		// Rules that jump to it first, then the chain itself.
		b, _ := exec.Command(tool, "-w", "-t", table, "-S").Output()
		for _, l := range strings.Split(string(b), "\n") {
			rule := strings.Fields(l)
			if len(rule) > 2 && rule[0] == "-A" && strings.Contains(l, "-j "+chain) {
				_ = exec.Command(tool, append([]string{"-w", "-t", table, "-D"}, rule[1:]...)...).Run()
			}
		}
		_ = exec.Command(tool, "-w", "-t", table, "-F", chain).Run()
		_ = exec.Command(tool, "-w", "-t", table, "-X", chain).Run()
	}
	for _, cg := range kubepodsCgroups() {
		if !s.paths[cg] {
			removeCgroupTree(cg)
		}
	}
	for _, p := range kubeletPaths {
		if !s.paths[p] {
			_ = os.RemoveAll(p)
		}
	}
}

// removeCgroupTree removes a cgroup directory depth first (a cgroup is
// removed with rmdir, never by deleting its files).
func removeCgroupTree(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() {
			removeCgroupTree(filepath.Join(dir, e.Name()))
		}
	}
	_ = syscall.Rmdir(dir)
}

// errorLines keeps a klog log's error lines.
func errorLines(log string) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.HasPrefix(l, "E") || strings.HasPrefix(l, "F") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
