"""A bundle under construction: conversion passes change it in memory, it is written once.

:func:`~edgesdk.converters.convert` and the toolchain builds run as passes over a
:class:`BundleDraft`: the manifest is a dict in memory, the files live in a staging directory
the draft owns. A pass writes its files with :meth:`BundleDraft.path`, lists them with
:meth:`~BundleDraft.add_files` (hashed once, then) and edits :attr:`~BundleDraft.manifest`.
Passes that need to run the graphs ask :meth:`~BundleDraft.model`, which shares loaded graphs
between the models it hands out, so a graph file is loaded once however many build mixes are
compared. :meth:`~BundleDraft.finish` seals and writes ``manifest.json`` once and re-reads the
directory with every file checked against its hash; the staging directory replaces the bundle
only after that (:func:`open_draft`, :func:`edit_bundle`), so a failing pass leaves nothing.
"""
import contextlib
import json
import os

from edgesdk import atomic
from edgesdk import bundle as bundle_io


class BundleDraft(object):
    """The manifest (``manifest``, a dict) and files (under ``root``) of a bundle being built.

    ``threads``: CPU threads of the models :meth:`model` builds."""

    def __init__(self, root, manifest=None, threads=None):
        self.root = root
        self.manifest = manifest
        self.threads = threads
        self._graphs = {}   # loaded graphs shared by the models below (EdgeModel graph_cache)
        self._models = {}   # (manifest digest, builds) -> EdgeModel

    def path(self, rel):
        """Where the bundle-relative file ``rel`` lives in the staging directory."""
        return os.path.join(self.root, *rel.split("/"))

    def add_files(self, rels):
        """Hash files written into the draft (new or changed) into the manifest's table."""
        self.manifest["files"].update(bundle_io.hash_files(self.root, sorted(rels)))

    def remove_files(self, prefix):
        """Drop every listed file whose path starts with ``prefix`` from the table."""
        for rel in [f for f in self.manifest["files"] if f.startswith(prefix)]:
            del self.manifest["files"][rel]

    def bundle(self):
        """The draft as a :class:`~edgesdk.bundle.Bundle`; the manifest is validated first, so
        a pass that broke it fails here, naming the key."""
        bundle_io.seal_manifest(self.manifest)
        return bundle_io.Bundle(self.root, self.manifest)

    def model(self, builds=None):
        """An :class:`~edgesdk.runtime.engine.EdgeModel` of the draft as it is now (``builds``
        as EdgeModel takes them). The same model is returned until the manifest changes;
        graphs are loaded once per file for all models."""
        from edgesdk.runtime.engine import EdgeModel
        bundle = self.bundle()
        key = (self.manifest["manifest_sha256"], json.dumps(builds, sort_keys=True))
        if key not in self._models:
            self._models[key] = EdgeModel(bundle, threads=self.threads, builds=builds,
                                          graph_cache=self._graphs)
        return self._models[key]

    def finish(self):
        """Write ``manifest.json`` (once) and re-read the directory with every file's hash
        checked; returns the :class:`~edgesdk.bundle.Bundle`."""
        self._models.clear()
        self._graphs.clear()
        bundle_io.write_manifest(self.root, self.manifest)
        return bundle_io.read_bundle(self.root)


@contextlib.contextmanager
def open_draft(output, force=False, threads=None):
    """A new, empty draft for a bundle at ``output``: the passes fill its manifest; on success
    it is finished and replaces ``output`` (only with ``force`` if that exists)."""
    with bundle_io.staging_directory(output, force=force) as tmp:
        draft = BundleDraft(tmp, threads=threads)
        yield draft
        draft.finish()


@contextlib.contextmanager
def edit_bundle(path, threads=None):
    """A draft of the existing bundle at ``path`` (read and verified once; a private copy of
    its manifest, its files in a staging copy); on success it replaces the bundle whole.

    ``path`` may be a :class:`BundleDraft` already: it is then used as it is and finished by
    whoever opened it, so a step written as ``with edit_bundle(bundle) as draft:`` runs alone
    on a path or as one pass of a larger edit (``edgesdk build`` hands toolchains a draft)."""
    if isinstance(path, BundleDraft):
        yield path
        return
    with atomic.writer_lock(path):   # from the read on: no other writer starts from it too
        bundle = bundle_io.read_bundle(path)
        with bundle_io.rewrite_bundle(bundle) as tmp:
            draft = BundleDraft(tmp, json.loads(json.dumps(bundle.manifest)), threads=threads)
            yield draft
            draft.finish()

