import os
import re

from helpers import ROOT


def test_every_route_is_in_openapi(app):
    spec = open(os.path.join(ROOT, "openapi.yaml"), encoding="utf-8").read()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:int:)?[^>]+>", "{id}", rule.rule)
        assert f"\n  {path}:" in spec, path
