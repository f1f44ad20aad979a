"""HTTP report service on Ray Serve: `app.build_app` (serve_config.yaml entry) composes two deployments,
`service.ReportService` (CPU ingress: auth, limits, images, prompts, our API and OpenAI's in
`openai_api`) and `engine.ReportEngine` (the model: scheduler + decode engine, `continuous`), joined
by a handle stream (`remote`); `inputs`/`schemas` (request checks), `sse` (streaming), `cli`
(`echo-ray serve`), and `static/` (the web page at GET /)."""
