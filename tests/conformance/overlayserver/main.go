// overlayserver serves containerd's own overlayfs snapshotter (snapshots/overlay) through containerd's
// contrib/snapshotservice on a unix socket: the same wire veritysnapd speaks. run-conformance.sh uses it to validate
// the harness (containerd's overlayfs passes every case of the 1.6 suite).
//
// Usage: overlayserver --root DIR --address SOCK [--verity X (ignored)]   (exits 0 on SIGTERM/SIGINT)
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/snapshots/overlay"
	"google.golang.org/grpc"
)

func main() {
	root := flag.String("root", "", "state root of the overlay snapshotter")
	address := flag.String("address", "", "unix socket to listen on")
	// Accepted and ignored, so that tests can run this in place of veritysnapd with the daemon's command line.
	_ = flag.String("verity", "", "ignored (veritysnapd's flag)")
	flag.Parse()
	if *root == "" || *address == "" {
		fmt.Fprintln(os.Stderr, "usage: overlayserver --root DIR --address SOCK")
		os.Exit(2)
	}
	sn, err := overlay.NewSnapshotter(*root)
	if err != nil {
		fmt.Fprintf(os.Stderr, "overlayserver: %v\n", err)
		os.Exit(1)
	}
	_ = os.Remove(*address)
	l, err := net.Listen("unix", *address)
	if err != nil {
		fmt.Fprintf(os.Stderr, "overlayserver: %v\n", err)
		os.Exit(1)
	}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(16<<20), grpc.MaxSendMsgSize(16<<20))
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		srv.GracefulStop()
	}()
	if err := srv.Serve(l); err != nil {
		fmt.Fprintf(os.Stderr, "overlayserver: %v\n", err)
		os.Exit(1)
	}
	if err := sn.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "overlayserver: close: %v\n", err)
		os.Exit(1)
	}
}
