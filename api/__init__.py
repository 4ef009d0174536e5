"""The OpenAI-compatible API face (`/v1`): routes in app.py, request checks in
openai_schema.py, keys and the bind rule in auth.py, the HTTP server and the headless
`python app.py serve` in server.py. The answers themselves are core.completions'."""
