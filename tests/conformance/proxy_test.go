// Package conformance runs containerd 1.6's snapshotter test suite (snapshots/testsuite) against a snapshotter
// reached the way containerd reaches a proxy plugin: containerd's snapshots/proxy client over gRPC on a unix socket.
//
// The snapshotter is not started here: run-conformance.sh starts one daemon per test case and passes its socket in
// VERITYSNAP_SOCKET (keys collide between cases, and the suite runs its cases in parallel).
//
// Built offline in GOPATH mode against Debian's golang-github-containerd-containerd-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go test -c -o conformance.test .
package conformance

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

// The plugin key containerd would put in each request's snapshotter field.
const pluginName = "veritysnap"

func dialSocket(ctx context.Context, path string) (*grpc.ClientConn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", addr)
	}
	return grpc.DialContext(ctx, path,
		grpc.WithInsecure(),
		grpc.WithBlock(),
		grpc.WithContextDialer(dialer),
		// containerd's proxy plugins use 16 MiB messages both ways.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)),
	)
}

func TestProxy(t *testing.T) {
	sock := os.Getenv("VERITYSNAP_SOCKET")
	if sock == "" {
		t.Skip("VERITYSNAP_SOCKET is not set (run through run-conformance.sh)")
	}
	newSnapshotter := func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		conn, err := dialSocket(ctx, sock)
		if err != nil {
			return nil, nil, err
		}
		sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), pluginName)
		return sn, func() error {
			err := sn.Close()
			if cerr := conn.Close(); err == nil {
				err = cerr
			}
			return err
		}, nil
	}
	testsuite.SnapshotterSuite(t, "Veritysnap", newSnapshotter)
}

// TestDrain runs after a case (run-conformance.sh): it removes every snapshot the case left in the suite's namespace,
// children before parents, then calls Cleanup, so that the runner can check that removal leaves no mounts, loop
// devices or files behind before it stops the daemon.
func TestDrain(t *testing.T) {
	sock := os.Getenv("VERITYSNAP_SOCKET")
	if sock == "" {
		t.Skip("VERITYSNAP_SOCKET is not set (run through run-conformance.sh)")
	}
	ctx := namespaces.WithNamespace(context.Background(), "testsuite")
	conn, err := dialSocket(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), pluginName)
	for round := 0; ; round++ {
		var infos []snapshots.Info
		if err := sn.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
			infos = append(infos, info)
			return nil
		}); err != nil {
			if round == 0 && (errdefs.IsNotFound(err) || strings.Contains(err.Error(), "bucket does not exist")) {
				// containerd's own storage (overlayserver) has no bucket until a namespace's first snapshot, and
				// contrib/snapshotservice sends that error as UNKNOWN.
				break
			}
			t.Fatalf("walk: %v", err)
		}
		if len(infos) == 0 {
			break
		}
		if round > 200 {
			t.Fatalf("snapshots still there after %d rounds of removal: %d left", round, len(infos))
		}
		parents := map[string]bool{}
		for _, info := range infos {
			parents[info.Parent] = true
		}
		removed := 0
		for _, info := range infos {
			if parents[info.Name] {
				continue
			}
			if err := sn.Remove(ctx, info.Name); err != nil {
				t.Fatalf("remove %q (%v): %v", info.Name, info.Kind, err)
			}
			removed++
		}
		if removed == 0 {
			t.Fatalf("no leaf among %d snapshots: a parent cycle or a parent outside the walk", len(infos))
		}
	}
	if c, ok := sn.(snapshots.Cleaner); ok {
		if err := c.Cleanup(ctx); err != nil && !strings.Contains(err.Error(), "bucket does not exist") {
			t.Fatalf("cleanup: %v", err)
		}
	}
}
