"""Schemathesis hooks for fuzzing the exchange against its OpenAPI description.

Requests to operations that declare a signature, carrying the real API
key, are signed the way the exchange requires (so that the fuzzer reaches
past authentication into the handlers): the generated timestamp,
recvWindow and signature are replaced by a current timestamp and an
HMAC-SHA256 of the final query string and body. The real key and admin
token are given to schemathesis as headers, so that its own checks of
invalid and missing credentials send other values, which stay unsigned.
Everything else the fuzzer generates is sent as generated.

Environment: FUZZ_SCHEMA (the openapi.json path), FUZZ_API_KEY,
FUZZ_SECRET, FUZZ_ADMIN_TOKEN.
"""

import hashlib
import hmac
import json
import os
import time
import urllib.parse

import requests
import schemathesis

KEY = os.environ["FUZZ_API_KEY"]
SECRET = os.environ["FUZZ_SECRET"]
ADMIN_TOKEN = os.environ["FUZZ_ADMIN_TOKEN"]


def signed_operations():
    with open(os.environ["FUZZ_SCHEMA"], encoding="utf-8") as file:
        schema = json.load(file)
    signed = set()
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            schemes = {name for requirement in operation.get("security", []) for name in requirement}
            if schemes & {"signature", "BinanceKey"}:
                signed.add((method.upper(), path))
    return signed


SIGNED = signed_operations()


def integer(text):
    return text.isdigit()


class Sign(requests.auth.AuthBase):
    """Signs the request as finally prepared: exact query string and body.

    Only requests the fuzzer meant to be valid: carrying the real API key
    (it is given the key with `-H X-MBX-APIKEY: ...`), a `signature` and an
    integer `timestamp`. Their timestamp becomes the current time and their
    signature the right one. A request without them, or with another key or
    a malformed timestamp, is the fuzzer testing that the exchange refuses
    it, and is sent as generated.
    """

    def __call__(self, request):
        if request.headers.get("X-MBX-APIKEY") != KEY:
            return request
        url = urllib.parse.urlsplit(request.url)
        query = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        is_form = request.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded")
        form = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True) if is_form else []
        params = dict(query + form)
        if "signature" not in params or not integer(params.get("timestamp", "")):
            return request
        now = str(int(time.time() * 1000))
        query = [(k, now if k == "timestamp" else v) for k, v in query if k != "signature"]
        if is_form:
            form = [(k, now if k == "timestamp" else v) for k, v in form if k != "signature"]
            body = urllib.parse.urlencode(form).encode("utf-8")
        encoded = urllib.parse.urlencode(query)
        signature = hmac.new(SECRET.encode("utf-8"), encoded.encode("utf-8") + body, hashlib.sha256).hexdigest()
        if is_form and form:
            # The signature goes last, in the body, as Binance clients send it.
            body = body + f"&signature={signature}".encode("utf-8")
            request.url = urllib.parse.urlunsplit(url._replace(query=encoded))
        else:
            request.url = urllib.parse.urlunsplit(url._replace(query=f"{encoded}&signature={signature}" if encoded else f"signature={signature}"))
        if request.body is not None or is_form:
            request.body = body
            request.headers["Content-Length"] = str(len(body))
        return request


@schemathesis.hook
def before_call(context, case, kwargs):
    if (case.method.upper(), case.path) in SIGNED:
        kwargs["auth"] = Sign()
