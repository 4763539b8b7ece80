"""Backups to Tencent COS: PostgreSQL, Redis and files, encrypted with age, checksummed, restorable.

The modules split in two. What runs on the host (shipped as one zipapp, stdlib + the COS SDK only):
`cos` (the COS edge), `crypt` (age), `manifest`, `retention`, `metrics`, `dump` (the stack's data
through `docker`), `runner` (backup, restore, drill, prune) and `__main__` (the host command line).
What runs on the operator's machine: `install` (the bundle, the host settings and bootstrap's steps)
and `operate` (`inv backup`, `inv backups`, `inv restore`, `inv restore.drill` over SSH).
"""
