"""Debian's Chromium, headless, driven by Selenium through Debian's chromedriver: no browser download, no
network besides the stack (Chromium's own background connections are turned off)."""

from __future__ import annotations

import base64
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def spki_hash(certificate: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)): how Chromium names one key it should accept."""
    loaded = x509.load_pem_x509_certificate(certificate.read_bytes())
    spki = loaded.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@contextmanager
def chromium(width: int = 1200, height: int = 1400, trusting: Path | None = None) -> Iterator[webdriver.Chrome]:
    """A headless Chromium; `trusting`: a server certificate whose key it accepts (and only that one)."""
    profile = tempfile.mkdtemp(prefix="stack-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", f"--user-data-dir={profile}", f"--window-size={width},{height}",
                     *([f"--ignore-certificate-errors-spki-list={spki_hash(trusting)}"] if trusting else [])):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
