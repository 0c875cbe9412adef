package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/sirupsen/logrus"

	// distribution finds storage drivers by name in a registry its
	// packages fill at import; the filesystem driver has to be linked in.
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

// distributionProxy is distribution/v3's registry in pull-through mode,
// in-process on its own loopback listener, with filesystem storage under
// dir: the configuration its documentation recommends for a mirror.
type distributionProxy struct {
	URL string
	srv *http.Server
	app *handlers.App
}

func startDistribution(ctx context.Context, dir, originURL string) (*distributionProxy, error) {
	// distribution logs through logrus's process-wide logger; its per
	// request lines would otherwise be a cost airlock is not charged.
	logrus.SetOutput(io.Discard)
	logrus.SetLevel(logrus.ErrorLevel)

	cfg := &configuration.Configuration{
		Version: "0.1",
		Storage: configuration.Storage{
			"filesystem":  configuration.Parameters{"rootdirectory": dir},
			"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
		},
		Proxy: configuration.Proxy{RemoteURL: originURL},
	}
	cfg.Log.Level = "error"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for distribution: %w", err)
	}
	d := &distributionProxy{URL: "http://" + l.Addr().String(), app: handlers.NewApp(ctx, cfg)}
	d.srv = &http.Server{Handler: d.app, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = d.srv.Serve(l) }()
	return d, nil
}

func (d *distributionProxy) close() {
	_ = d.srv.Close()
	_ = d.app.Shutdown()
}
