package main

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/airlock-registry/airlock/config"
)

// newTracer returns the tracer the proxy records spans with and a function
// that flushes and stops the exporter. With tracing off it returns a nil
// tracer, which the proxy treats as recording nothing.
func newTracer(ctx context.Context, c config.Tracing) (trace.Tracer, func(context.Context) error, error) {
	if !c.Enabled() {
		return nil, func(context.Context) error { return nil }, nil
	}
	opts := []otlptracehttp.Option{otlptracehttp.WithEndpoint(c.Endpoint)}
	if c.Insecure {
		opts = append(opts, otlptracehttp.WithInsecure())
	}
	exp, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("tracing.endpoint %s: %w", c.Endpoint, err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(c.SampleRatio))),
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(c.ServiceName))),
	)
	return tp.Tracer("github.com/airlock-registry/airlock/proxy"), tp.Shutdown, nil
}
