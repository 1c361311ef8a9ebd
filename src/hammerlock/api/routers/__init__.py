"""Platform routers (health, keys). Domain routers live in their domain packages."""
