"""The real-wire tier: fracgpu's HTTP servers driven the way real clients drive them.

The old tests reached the extender and the webhook through aiohttp's test client, which hands the
server a whole body in one buffer. Real clients do not. What each test here reproduces:

- `gowire.py`: a raw-socket client (plain and TLS) that writes as Go's net/http does: request line
  and headers, then the body in 4 KiB writes on a TCP_NODELAY socket with short pauses, with
  Content-Length or chunked. Reusable by any test (`from tests.realwire.gowire import ...`).
- `test_extender_wire.py`: kube-scheduler's captured requests (tests/fixtures/kube-scheduler), a
  50,000-node NodeNames body and a multi-MB Nodes body reach `fracgpu extender` in pieces, over
  plain HTTP and mutual TLS; every answer must equal the answer to the one-piece body. The old
  `content.read(n)` read only what was buffered and answered 400 "not JSON" (issue 13, defect 1).
  Also: a body over the limit (Content-Length or chunked) is 413 with the limit; a client that
  stops mid-body is answered 408 after a bounded wait; one that hangs up leaves no traceback.
- `test_webhook_wire.py`: the same for the admission webhook over real HTTPS (a ~1 MB
  AdmissionReview in Go writes), its 413 and its bounded wait for a stalled client (it waited
  forever before).
- `test_huge_integers.py`: a JSON integer over Python's 4,300-digit conversion limit in a request
  body (extender, webhook), in a node/pod annotation arriving through the cache's watch, or in an
  answer the Kubernetes client reads from a real socket, is a 400 / a refusal / a client error that
  names the field, never a traceback (issue 13, defect 6).
"""
