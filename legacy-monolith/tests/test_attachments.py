import hashlib
import io
import os


def test_attachment_upload_download_delete(app, client, api):
    (a, ha), (b, hb) = api.user(), api.user()
    p = api.project(ha)
    t = api.task(ha, p["id"])
    content = b"%PDF-1.4 hello\x00\xff"
    r = client.post(f"/api/tasks/{t['id']}/attachments", headers=ha,
                    data={"file": (io.BytesIO(content), "../../Report Q1.pdf", "application/pdf")})
    assert r.status_code == 201, r.data
    m = r.json
    assert set(m) == {"id", "task_id", "uploader_id", "filename", "content_type", "size", "sha256", "created_at"}
    assert m["filename"] == "Report_Q1.pdf" and m["content_type"] == "application/pdf"
    assert m["size"] == len(content) and m["sha256"] == hashlib.sha256(content).hexdigest()
    r = client.get(f"/api/attachments/{m['id']}", headers=hb)
    assert r.status_code == 200 and r.data == content and r.mimetype == "application/pdf"
    assert "attachment" in r.headers["Content-Disposition"] and "Report_Q1.pdf" in r.headers["Content-Disposition"]
    assert client.get(f"/api/attachments/{m['id']}/meta", headers=hb).json == m
    files = os.listdir(os.path.join(app.config["DATA_DIR"], "attachments"))
    assert len(files) == 1
    # non-member cannot upload / delete
    assert client.post(f"/api/tasks/{t['id']}/attachments", headers=hb,
                       data={"file": (io.BytesIO(b"x"), "x.txt")}).status_code == 403
    assert client.delete(f"/api/attachments/{m['id']}", headers=hb).status_code == 403
    r = client.post(f"/api/tasks/{t['id']}/attachments", headers=ha, data={"other": "x"})
    assert r.status_code == 400 and r.json["field"] == "file"
    assert client.post("/api/tasks/999/attachments", headers=ha,
                       data={"file": (io.BytesIO(b"x"), "x.txt")}).status_code == 404
    assert client.delete(f"/api/attachments/{m['id']}", headers=ha).status_code == 204
    assert client.get(f"/api/attachments/{m['id']}", headers=ha).json == {
        "error": "not_found", "message": f"attachment {m['id']} not found"}
    assert client.get(f"/api/attachments/{m['id']}/meta", headers=ha).status_code == 404
    assert os.listdir(os.path.join(app.config["DATA_DIR"], "attachments")) == []


def test_attachment_size_limit(app, client, api):
    _, ha = api.user()
    p = api.project(ha)
    t = api.task(ha, p["id"])
    big = b"x" * (app.config["MAX_CONTENT_LENGTH"] + 1)
    r = client.post(f"/api/tasks/{t['id']}/attachments", headers=ha,
                    data={"file": (io.BytesIO(big), "big.bin", "application/octet-stream")})
    assert r.status_code == 413
    assert r.json == {"error": "payload_too_large", "message":
                      f"request body exceeds the maximum upload size of {app.config['MAX_CONTENT_LENGTH']} bytes"}
    assert not any(e["entity"] == "attachment" for e in api.events())
    # default content type when the client sends none
    r = client.post(f"/api/tasks/{t['id']}/attachments", headers=ha, data={"file": (io.BytesIO(b"abc"), "a")})
    assert r.status_code == 201 and r.json["content_type"] == "application/octet-stream"
