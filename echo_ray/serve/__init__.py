"""HTTP report service on Ray Serve: `app.build_app` (serve_config.yaml entry), `service.ReportService`
(FastAPI ingress + @serve.batch over ReportGenerator), `inputs`/`schemas` (request checks), `batching`,
`sse` (streaming), `cli` (`echo-ray serve`), and `static/` (the web page at GET /)."""
