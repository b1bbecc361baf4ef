"""Row -> API dict. These are THE resource shapes (also used in event payloads)."""
from .jsonutil import parse_ts


def user(r):
    return {
        "id": r["id"],
        "username": r["username"],
        "email": r["email"],
        "full_name": r["full_name"],
        "created_at": parse_ts(r["created_at"]),
        "updated_at": parse_ts(r["updated_at"]),
    }


def project(r):
    return {
        "id": r["id"],
        "name": r["name"],
        "description": r["description"],
        "owner_id": r["owner_id"],
        "created_at": parse_ts(r["created_at"]),
        "updated_at": parse_ts(r["updated_at"]),
    }


def member(r):
    return {
        "id": r["id"],
        "project_id": r["project_id"],
        "user_id": r["user_id"],
        "role": r["role"],
        "added_at": parse_ts(r["added_at"]),
    }


def task(r):
    return {
        "id": r["id"],
        "project_id": r["project_id"],
        "title": r["title"],
        "description": r["description"],
        "status": r["status"],
        "priority": r["priority"],
        "assignee_id": r["assignee_id"],
        "creator_id": r["creator_id"],
        "due_date": r["due_date"],
        "completed_at": parse_ts(r["completed_at"]),
        "created_at": parse_ts(r["created_at"]),
        "updated_at": parse_ts(r["updated_at"]),
    }


def comment(r):
    return {
        "id": r["id"],
        "task_id": r["task_id"],
        "author_id": r["author_id"],
        "body": r["body"],
        "created_at": parse_ts(r["created_at"]),
        "updated_at": parse_ts(r["updated_at"]),
    }


def attachment(r):
    return {
        "id": r["id"],
        "task_id": r["task_id"],
        "uploader_id": r["uploader_id"],
        "filename": r["filename"],
        "content_type": r["content_type"],
        "size": r["size"],
        "sha256": r["sha256"],
        "created_at": parse_ts(r["created_at"]),
    }
