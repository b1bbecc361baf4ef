"""API error type and handlers.

Every error raised by the API code answers with a JSON body:
    {"error": "<code>", "message": "<human text>"}
and, for validation errors, an extra "field" key naming the offending
field/parameter. Werkzeug's own 404 (unknown URL) and 405 (wrong method)
are left as Flask's default HTML pages on purpose (legacy behaviour).
"""
from flask import jsonify
from werkzeug.exceptions import InternalServerError, RequestEntityTooLarge


class APIError(Exception):
    def __init__(self, status, error, message, field=None, headers=None, extra=None):
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.extra = extra or {}  # more keys for the body (e.g. owner/epoch of a 421)

    def to_response(self):
        body = {"error": self.error, "message": self.message, **self.extra}
        if self.field is not None:
            body["field"] = self.field
        resp = jsonify(body)
        resp.status_code = self.status
        for k, v in self.headers.items():
            resp.headers[k] = v
        return resp


def bad_request(message):
    return APIError(400, "bad_request", message)


def validation(field, message):
    return APIError(400, "validation_error", message, field=field)


def unauthorized(message):
    return APIError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def forbidden(message):
    return APIError(403, "forbidden", message)


def not_found(entity, ident):
    return APIError(404, "not_found", f"{entity} {ident} not found")


def conflict(message, field=None):
    return APIError(409, "conflict", message, field=field)


def misdirected(feature, owner, epoch):
    """421: this side does not own the feature's writes; the request was not processed."""
    return APIError(421, "misdirected", f"{feature} are owned by {owner} (epoch {epoch})",
                    extra={"owner": owner, "epoch": epoch})


def not_owner(feature, owner, epoch):
    """409 for a handover asked of a side that is not the owner."""
    return APIError(409, "conflict", f"{feature} are owned by {owner} (epoch {epoch}), not by this side",
                    extra={"owner": owner, "epoch": epoch})


def register(app):
    @app.errorhandler(APIError)
    def _api_error(e):
        return e.to_response()

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(e):
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return APIError(413, "payload_too_large",
                        f"request body exceeds the maximum upload size of {limit} bytes").to_response()

    @app.errorhandler(InternalServerError)
    def _internal(e):
        return APIError(500, "internal_error", "internal server error").to_response()
