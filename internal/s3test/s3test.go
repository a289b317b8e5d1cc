// Package s3test runs a real S3 server for tests: SeaweedFS's `weed`
// (built by hack/install-deps.sh from the Go module proxy) on 127.0.0.1,
// with one identity whose keys the test knows, stopped by PID when the
// test ends. It also uploads a Nix binary cache directory into a bucket
// as is: Debian's Nix 2.8 is built without S3 support, so no `nix copy
// --to s3://` can write one here.
package s3test

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/storepkg/storepkg/internal/testenv"
	"github.com/storepkg/storepkg/internal/toolcache"
)

// SeaweedFSVersion is the weed hack/install-deps.sh builds; keep them in
// step.
const SeaweedFSVersion = "v0.0.0-20261109003541-7506e5f91cd6"

// Region is the region the tests name; SeaweedFS accepts any.
const Region = "us-east-1"

// Server is a running weed with its S3 gateway.
type Server struct {
	// Endpoint is the S3 gateway's URL, http://127.0.0.1:PORT.
	Endpoint string
	// AccessKey and SecretKey are the one identity's, allowed everything.
	AccessKey, SecretKey string
	// Dir holds weed's data and logs.
	Dir string

	cmd  *exec.Cmd
	done chan struct{}
}

// WeedPath is where hack/install-deps.sh puts weed, or weed on PATH.
func WeedPath() (string, error) {
	p := filepath.Join(toolcache.Dir(), "seaweedfs-"+SeaweedFSVersion, "weed")
	if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
		return p, nil
	}
	if p, err := exec.LookPath("weed"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("weed (SeaweedFS %s) not found in %s nor on PATH", SeaweedFSVersion, filepath.Dir(p))
}

// Start runs weed (master, volume, filer and S3 gateway in one process)
// on free ports of 127.0.0.1 and waits until its S3 gateway answers
// signed requests. It is stopped (SIGKILL) and its data removed when the
// test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	weed, err := WeedPath()
	if err != nil {
		testenv.Unavailable(t, "%v", err)
	}
	dir, err := os.MkdirTemp("", "storepkg-s3test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &Server{Dir: dir, AccessKey: "storepkgtestkey", SecretKey: "storepkg-test-secret-0123456789", done: make(chan struct{})}
	cfg := map[string]any{"identities": []any{map[string]any{
		"name":        "test",
		"credentials": []any{map[string]string{"accessKey": s.AccessKey, "secretKey": s.SecretKey}},
		"actions":     []string{"Admin", "Read", "List", "Tagging", "Write"},
	}}}
	data, _ := json.Marshal(cfg)
	s3cfg := filepath.Join(dir, "s3.json")
	if err := os.WriteFile(s3cfg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"data", "home"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ports, err := freePorts(8)
	if err != nil {
		t.Fatal(err)
	}
	p := func(i int) string { return strconv.Itoa(ports[i]) }
	s.Endpoint = "http://127.0.0.1:" + p(6)
	log, err := os.Create(filepath.Join(dir, "weed.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	// Every listener on 127.0.0.1 and a port of its own (the gRPC ports
	// too: weed's default, port+10000, could collide with another
	// test's); no telemetry, no Iceberg or Lance listeners. 8 volumes:
	// the master grows 7 at once for its default replication, and the
	// volumes are sparse files of at most 64 MB.
	s.cmd = exec.Command(weed, "server",
		"-ip=127.0.0.1", "-ip.bind=127.0.0.1",
		"-dir="+filepath.Join(dir, "data"),
		"-master.port="+p(0), "-master.port.grpc="+p(1),
		"-master.telemetry=false", "-master.volumeSizeLimitMB=64",
		"-volume.port="+p(2), "-volume.port.grpc="+p(3), "-volume.max=8",
		"-filer", "-filer.port="+p(4), "-filer.port.grpc="+p(5),
		"-s3", "-s3.port="+p(6), "-s3.port.grpc="+p(7),
		"-s3.port.iceberg=0", "-s3.port.lance=0",
		"-s3.localSocket="+filepath.Join(dir, "s3.sock"),
		"-s3.config="+s3cfg,
	)
	// Its own working directory and HOME: weed looks for its
	// configuration files in both.
	s.cmd.Dir = filepath.Join(dir, "home")
	s.cmd.Env = append(os.Environ(), "HOME="+s.cmd.Dir)
	s.cmd.Stdout, s.cmd.Stderr = log, log
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting weed: %v", err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		s.stop()
		// weed's Unix sockets beside its gRPC (and the filer's HTTP)
		// ports are always in /tmp and outlive it.
		for _, port := range ports {
			socks, _ := filepath.Glob(fmt.Sprintf("/tmp/seaweedfs-*-%d.sock", port))
			for _, sock := range socks {
				os.Remove(sock)
			}
		}
	})
	if err := s.waitReady(90 * time.Second); err != nil {
		logTail, _ := os.ReadFile(filepath.Join(dir, "weed.log"))
		if len(logTail) > 4000 {
			logTail = logTail[len(logTail)-4000:]
		}
		t.Fatalf("weed's S3 gateway at %s: %v\nweed.log ends:\n%s", s.Endpoint, err, logTail)
	}
	return s
}

// stop ends weed by its PID with SIGKILL: its data is thrown away with
// the test, and on SIGTERM it took 10 s to exit.
func (s *Server) stop() {
	if s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
}

// waitReady waits until a bucket can be created and written: the
// gateway answers before the volume server has joined the master.
func (s *Server) waitReady(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := s.client(s.AccessKey, s.SecretKey)
	var last error
	for {
		select {
		case <-s.done:
			return fmt.Errorf("weed exited: %v", s.cmd.ProcessState)
		default:
		}
		last = func() error {
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			defer rcancel()
			if _, err := c.CreateBucket(rctx, &s3.CreateBucketInput{Bucket: aws.String("storepkg-s3test-ready")}); err != nil && !strings.Contains(err.Error(), "BucketAlreadyOwnedByYou") {
				return err
			}
			_, err := c.PutObject(rctx, &s3.PutObjectInput{Bucket: aws.String("storepkg-s3test-ready"), Key: aws.String("ready"), Body: strings.NewReader("ok")})
			return err
		}()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready after %v: %w", timeout, last)
		case <-s.done:
			return fmt.Errorf("weed exited: %v", s.cmd.ProcessState)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// client is an S3 client of the server with these keys, path-style, with
// no retries and none of the machine's AWS configuration.
func (s *Server) client(access, secret string) *s3.Client {
	return s3.New(s3.Options{
		Region:                     Region,
		BaseEndpoint:               aws.String(s.Endpoint),
		UsePathStyle:               true,
		Credentials:                credentials.NewStaticCredentialsProvider(access, secret, ""),
		Retryer:                    aws.NopRetryer{},
		HTTPClient:                 &http.Client{Timeout: 60 * time.Second},
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}

// Client is an S3 client of the server with its identity's keys.
func (s *Server) Client() *s3.Client { return s.client(s.AccessKey, s.SecretKey) }

// CreateBucket makes a bucket.
func (s *Server) CreateBucket(t testing.TB, bucket string) {
	t.Helper()
	if _, err := s.Client().CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatalf("creating bucket %s: %v", bucket, err)
	}
}

// UploadCache creates bucket and uploads every file of the binary cache
// directory dir (a `nix copy --to file://` cache) under its path relative
// to dir, byte for byte: the same objects Nix's S3 store writes.
func (s *Server) UploadCache(t testing.TB, bucket, dir string) {
	t.Helper()
	s.CreateBucket(t, bucket)
	c := s.Client()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		_, err = c.PutObject(context.Background(), &s3.PutObjectInput{
			Bucket: aws.String(bucket), Key: aws.String(filepath.ToSlash(rel)),
			Body: f, ContentLength: aws.Int64(fi.Size()), ContentType: aws.String(contentType(rel)),
		})
		if err != nil {
			return fmt.Errorf("uploading %s: %w", rel, err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("uploading cache %s to bucket %s: %v", dir, bucket, err)
	}
}

// contentType is the type Nix's binary cache stores give each file.
func contentType(rel string) string {
	switch {
	case strings.HasSuffix(rel, ".narinfo"):
		return "text/x-nix-narinfo"
	case rel == "nix-cache-info":
		return "text/x-nix-cache-info"
	case strings.HasPrefix(rel, "nar/"):
		return "application/x-nix-nar"
	}
	return "application/octet-stream"
}

// WriteSharedConfig writes an AWS shared credentials file and config file
// under dir, as a node admin would for the fetch child: the profile
// "default" with the server's keys, and each of profiles (name -> secret
// key, with the server's access key) besides. It returns the environment
// that points the AWS SDK at them and at nothing else of the machine:
// no instance metadata (169.254.169.254 is no address a test may
// reach), no credentials from this process's environment.
func (s *Server) WriteSharedConfig(t testing.TB, dir string, profiles map[string]string) []string {
	t.Helper()
	var creds, conf strings.Builder
	add := func(name, secret string) {
		fmt.Fprintf(&creds, "[%s]\naws_access_key_id = %s\naws_secret_access_key = %s\n\n", name, s.AccessKey, secret)
		section := "profile " + name
		if name == "default" {
			section = name
		}
		fmt.Fprintf(&conf, "[%s]\nregion = %s\n\n", section, Region)
	}
	add("default", s.SecretKey)
	for name, secret := range profiles {
		add(name, secret)
	}
	credsFile, confFile := filepath.Join(dir, "aws-credentials"), filepath.Join(dir, "aws-config")
	if err := os.WriteFile(credsFile, []byte(creds.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(confFile, []byte(conf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{
		"AWS_SHARED_CREDENTIALS_FILE=" + credsFile,
		"AWS_CONFIG_FILE=" + confFile,
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// SetAWSEnv makes this process's AWS environment exactly env (KEY=value
// entries) for the rest of the test: every other AWS_* variable is
// unset. Not for parallel tests (t.Setenv).
func SetAWSEnv(t *testing.T, env []string) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "AWS_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			t.Fatalf("SetAWSEnv: %q is not KEY=value", kv)
		}
		t.Setenv(k, v)
	}
}

// freePorts returns n distinct ports of 127.0.0.1 that were free just
// now.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
