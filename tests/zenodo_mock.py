#!/usr/bin/python3
"""A stand-in for Zenodo's REST deposition API on loopback, for tests/test_archive.c.

    zenodo_mock.py --token T --archive FILE --log LOG [--fail STEP:STATUS]

Listens on 127.0.0.1 with a port chosen by the system and, once the socket listens,
writes that port and a newline to stdout in one write(2) (print() would write "PORT" and
"\n" apart under PYTHONUNBUFFERED=1); the reader takes the line up to its newline.
Serves the four calls of `ctorch archive --upload zenodo`:

    POST /api/deposit/depositions                      body {}            -> 201
    PUT  /api/files/<bucket>/<name of FILE>            the bytes of FILE  -> 201
    PUT  /api/deposit/depositions/<id>                 {"metadata": ...}  -> 200
    POST /api/deposit/depositions/<id>/actions/publish                    -> 202

and checks each one: method and path, "Authorization: Bearer T", the JSON body's fields,
the uploaded bytes' SHA-256 against FILE, the order of the calls. Every request is
appended to LOG as one line, "<step> ok ..." or "<step> ERROR <why>" (a failed check is
answered with HTTP 400 and a Zenodo-like error body, so the client fails too).
--fail STEP:STATUS (STEP: create, upload, metadata, publish) answers that step with
STATUS (401 or 400) and Zenodo's error body instead. Python standard library only; exits
when its parent process ends, or after 300 seconds.
"""
import argparse
import hashlib
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEPOSITION_ID = 4242
BUCKET = "5f1c2a3b-bucket"
ZENODO_401 = {"status": 401, "message": "The server could not verify that you are authorized "
              "to access the URL requested. You either supplied the wrong credentials (e.g. a "
              "bad password), or your browser doesn't understand how to supply the credentials "
              "required."}
ZENODO_400 = {"status": 400, "message": "Validation error.",
              "errors": [{"field": "metadata.creators",
                          "messages": ["Missing data for required field."]}]}


class State:
    def __init__(self, args):
        self.args = args
        self.fail = {}
        for f in args.fail or []:
            step, status = f.split(":")
            self.fail[step] = int(status)
        self.done = set()
        self.lock = threading.Lock()

    def log(self, line):
        with self.lock, open(self.args.log, "a") as f:
            f.write(line + "\n")


def check_metadata(meta):
    """Why the deposition metadata is not what Zenodo needs, or None."""
    if not isinstance(meta, dict):
        return "metadata is not an object"
    if meta.get("upload_type") != "dataset":
        return "upload_type %r" % meta.get("upload_type")
    for key in ("title", "description", "license", "version"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            return "%s missing or empty" % key
    if not re.fullmatch(r"\d{4}-\d\d-\d\d", str(meta.get("publication_date"))):
        return "publication_date %r" % meta.get("publication_date")
    creators = meta.get("creators")
    if not isinstance(creators, list) or not creators:
        return "no creators"
    for c in creators:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"]:
            return "creator without a name: %r" % (c,)
    kw = meta.get("keywords")
    if not isinstance(kw, list) or not all(isinstance(k, str) and k for k in kw):
        return "keywords %r" % (kw,)
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None  # set in main

    def log_message(self, fmt, *args):  # the log file gets our own lines
        pass

    def reply(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def refuse(self, step, why):
        self.state.log("%s ERROR %s" % (step, why))
        self.reply(400, {"status": 400, "message": "mock: " + why})

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def base(self):
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    def route(self, method):
        st = self.state
        path = self.path
        data = self.body()
        dep = "/api/deposit/depositions"
        if method == "POST" and path == dep:
            step = "create"
        elif method == "PUT" and path.startswith("/api/files/%s/" % BUCKET):
            step = "upload"
        elif method == "PUT" and path == "%s/%d" % (dep, DEPOSITION_ID):
            step = "metadata"
        elif method == "POST" and path == "%s/%d/actions/publish" % (dep, DEPOSITION_ID):
            step = "publish"
        else:
            st.log("unknown ERROR %s %s" % (method, path))
            return self.reply(404, {"status": 404, "message": "The requested URL was not found "
                                    "on the server."})
        if self.headers.get("Authorization") != "Bearer " + st.args.token:
            st.log("%s ERROR bad Authorization header" % step)
            return self.reply(401, ZENODO_401)
        if step in st.fail:
            st.log("%s failed on request with HTTP %d" % (step, st.fail[step]))
            return self.reply(st.fail[step], ZENODO_401 if st.fail[step] == 401 else ZENODO_400)
        return getattr(self, "do_" + step)(data)

    def do_create(self, data):
        if self.headers.get("Content-Type") != "application/json":
            return self.refuse("create", "Content-Type %r" % self.headers.get("Content-Type"))
        try:
            if json.loads(data) != {}:
                return self.refuse("create", "body is not {}")
        except ValueError:
            return self.refuse("create", "body is not JSON")
        self.state.done.add("create")
        self.state.log("create ok")
        links = {"bucket": "%s/api/files/%s" % (self.base(), BUCKET),
                 "html": "%s/deposit/%d" % (self.base(), DEPOSITION_ID),
                 "self": "%s/api/deposit/depositions/%d" % (self.base(), DEPOSITION_ID)}
        self.reply(201, {"id": DEPOSITION_ID, "links": links, "state": "unsubmitted",
                         "submitted": False, "metadata": {}})

    def do_upload(self, data):
        name = self.path.rsplit("/", 1)[1]
        want_name = os.path.basename(self.state.args.archive)
        if "create" not in self.state.done:
            return self.refuse("upload", "upload before the deposition was created")
        if name != want_name:
            return self.refuse("upload", "file name %r, expected %r" % (name, want_name))
        with open(self.state.args.archive, "rb") as f:
            want = hashlib.sha256(f.read()).hexdigest()
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            return self.refuse("upload", "sha256 %s of %d bytes, the archive's is %s" %
                               (got, len(data), want))
        self.state.done.add("upload")
        self.state.log("upload ok %s %d bytes sha256 %s" % (name, len(data), got))
        self.reply(201, {"key": name, "size": len(data),
                         "checksum": "md5:" + hashlib.md5(data).hexdigest()})

    def do_metadata(self, data):
        try:
            body = json.loads(data)
        except ValueError:
            return self.refuse("metadata", "body is not JSON")
        if "upload" not in self.state.done:
            return self.refuse("metadata", "metadata before the upload")
        if not isinstance(body, dict) or set(body) != {"metadata"}:
            return self.refuse("metadata", "body is not {\"metadata\": ...}")
        why = check_metadata(body["metadata"])
        if why:
            return self.refuse("metadata", why)
        self.state.done.add("metadata")
        meta = body["metadata"]
        self.state.log("metadata ok title=%s creators=%s license=%s" % (
            json.dumps(meta["title"]), json.dumps([c["name"] for c in meta["creators"]]),
            meta["license"]))
        self.reply(200, {"id": DEPOSITION_ID, "metadata": meta,
                         "links": {"html": "%s/deposit/%d" % (self.base(), DEPOSITION_ID)}})

    def do_publish(self, data):
        if not {"upload", "metadata"} <= self.state.done:
            return self.refuse("publish", "publish before the upload and the metadata")
        self.state.log("publish ok")
        doi = "10.5072/zenodo.%d" % DEPOSITION_ID
        self.reply(202, {"id": DEPOSITION_ID, "doi": doi, "state": "done", "submitted": True,
                         "links": {"record_html": "%s/records/%d" % (self.base(), DEPOSITION_ID),
                                   "doi": "https://doi.org/" + doi}})

    def do_POST(self):
        self.route("POST")

    def do_PUT(self):
        self.route("PUT")

    def do_GET(self):
        self.route("GET")


def watchdog(parent):
    """Exits when the parent process (the test) is gone, or after 300 seconds."""
    start = time.time()
    while os.getppid() == parent and time.time() - start < 300:
        time.sleep(0.2)
    os._exit(0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--token", required=True)
    p.add_argument("--archive", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--fail", action="append")
    args = p.parse_args()
    Handler.state = State(args)
    # bound and listening on return: a connection made from here on waits in the backlog
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True  # a connection left open never holds up another, nor exit
    threading.Thread(target=watchdog, args=(os.getppid(),), daemon=True).start()
    os.write(1, b"%d\n" % server.server_address[1])  # one write: the reader may close after it
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
