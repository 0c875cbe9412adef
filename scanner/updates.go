package scanner

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/quay/claircore/alpine"
	"github.com/quay/claircore/aws"
	"github.com/quay/claircore/datastore/postgres"
	"github.com/quay/claircore/debian"
	"github.com/quay/claircore/libvuln/driver"
	"github.com/quay/claircore/libvuln/updates"
	"github.com/quay/claircore/oracle"
	"github.com/quay/claircore/photon"
	"github.com/quay/claircore/rhel/vex"
	"github.com/quay/claircore/suse"
	"github.com/quay/claircore/ubuntu"
	"github.com/quay/claircore/updater/osv"
	"go.yaml.in/yaml/v3"
)

// updaterSets builds claircore's updater set factories by name: the sets
// of claircore's updater/defaults. They are built per Scanner, not taken
// from claircore's process-wide registry, so that two scanners in one
// process (tests, an import beside a server) never share a configured
// factory.
func updaterSets(ctx context.Context) (map[string]driver.UpdaterSetFactory, error) {
	af, err := alpine.NewFactory(ctx)
	if err != nil {
		return nil, err
	}
	uf, err := ubuntu.NewFactory(ctx)
	if err != nil {
		return nil, err
	}
	df, err := debian.NewFactory(ctx)
	if err != nil {
		return nil, err
	}
	return map[string]driver.UpdaterSetFactory{
		"alpine":   af,
		"ubuntu":   uf,
		"debian":   df,
		"osv":      new(osv.Factory),
		"rhel-vex": new(vex.Factory),
		"aws":      driver.UpdaterSetFactoryFunc(aws.UpdaterSet),
		"oracle":   driver.UpdaterSetFactoryFunc(oracle.UpdaterSet),
		"photon":   driver.UpdaterSetFactoryFunc(photon.UpdaterSet),
		"suse":     new(suse.Factory),
	}, nil
}

// UpdaterSets lists the names config.Scanner.Updaters.Sets accepts.
func UpdaterSets() []string {
	all, _ := updaterSets(context.Background())
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// updaterConfigs turns the YAML configuration blocks into claircore's
// configuration functions (claircore's config structs carry yaml tags).
func updaterConfigs(cfg map[string]yaml.Node) updates.Configs {
	out := make(updates.Configs, len(cfg))
	for name, node := range cfg {
		out[name] = func(v any) error {
			if err := node.Decode(v); err != nil {
				return fmt.Errorf("scanner.updaters.config.%s: %w", name, err)
			}
			return nil
		}
	}
	return out
}

// newUpdates builds the manager that runs the configured updater sets.
func (s *Scanner) newUpdates(ctx context.Context) (*updates.Manager, error) {
	all, err := updaterSets(ctx)
	if err != nil {
		return nil, fmt.Errorf("scanner: building updaters: %w", err)
	}
	enabled := map[string]driver.UpdaterSetFactory{}
	for _, name := range s.cfg.Updaters.Sets {
		f, ok := all[name]
		if !ok {
			return nil, fmt.Errorf("scanner: unknown updater set %q in scanner.updaters.sets; known: %s", name, strings.Join(UpdaterSets(), ", "))
		}
		enabled[name] = watchedFactory{name: name, f: f, failures: &s.updateFailures}
	}
	m, err := updates.NewManager(ctx, postgres.NewMatcherStore(s.pool), s.locker, s.opts.Client,
		updates.WithFactories(enabled),
		updates.WithConfigs(updaterConfigs(s.cfg.Updaters.Config)),
		updates.WithInterval(s.cfg.Updaters.Interval.Std()),
		updates.WithBatchSize(2),
		updates.WithGC(updateRetention),
	)
	if err != nil {
		return nil, fmt.Errorf("scanner: configuring updaters: %w", err)
	}
	return m, nil
}

// failures collects what went wrong in one updater run that claircore
// only logs (an updater set whose index could not be read).
type failures struct {
	mu   sync.Mutex
	errs []string
}

func (f *failures) add(msg string) {
	f.mu.Lock()
	f.errs = append(f.errs, msg)
	f.mu.Unlock()
}

func (f *failures) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.errs
	f.errs = nil
	return e
}

// watchedFactory records the errors of an updater set factory, which
// claircore's manager logs and drops.
type watchedFactory struct {
	name     string
	f        driver.UpdaterSetFactory
	failures *failures
}

func (w watchedFactory) UpdaterSet(ctx context.Context) (driver.UpdaterSet, error) {
	set, err := w.f.UpdaterSet(ctx)
	if err != nil {
		w.failures.add(fmt.Sprintf("%s: %v", w.name, err))
	}
	return set, err
}

func (w watchedFactory) Configure(ctx context.Context, cf driver.ConfigUnmarshaler, c *http.Client) error {
	if f, ok := w.f.(driver.Configurable); ok {
		return f.Configure(ctx, cf, c)
	}
	return nil
}

// runUpdates runs the updaters now and then every interval. A failed
// update keeps the data of the last good one: claircore replaces an
// updater's data only when a fetch and parse succeed.
func (s *Scanner) runUpdates(ctx context.Context) {
	for {
		t0 := time.Now()
		err := s.updates.Run(ctx)
		if ctx.Err() != nil {
			return
		}
		msgs := s.updateFailures.take()
		if err != nil {
			msgs = append(msgs, strings.Split(strings.TrimSpace(strings.TrimPrefix(err.Error(), "updating errors:")), "\n")...)
		}
		msgs = slices.DeleteFunc(msgs, func(m string) bool { return strings.TrimSpace(m) == "" })
		if len(msgs) > 0 {
			s.metrics.updates.WithLabelValues("failed").Inc()
			s.log.Warn("scanner: vulnerability data update failed; the last good data stays in use", "errors", msgs, "sets", s.cfg.Updaters.Sets)
		} else {
			s.metrics.updates.WithLabelValues("ok").Inc()
			s.metrics.lastUpdate.SetToCurrentTime()
			s.log.Info("scanner: vulnerability data updated", "sets", s.cfg.Updaters.Sets, "took", time.Since(t0).Round(time.Millisecond))
		}
		// Whatever changed, the re-check finds it.
		s.nudge(s.recheck)
		if !sleep(ctx, s.cfg.Updaters.Interval.Std(), nil) {
			return
		}
	}
}
