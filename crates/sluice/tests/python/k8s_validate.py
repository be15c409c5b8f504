"""Validates every manifest in the given files with kubernetes-validate (strict:
unknown fields are errors) against the oldest and newest Kubernetes versions we
support, and prints the parsed documents as JSON on stdout for the Rust test to
inspect. Exits 1 naming the file, document and error when one is invalid.

Usage: python k8s_validate.py FILE...
"""

import json
import sys

import kubernetes_validate
import yaml

VERSIONS = ["1.30.0", "1.37.0"]


def main():
    documents = []
    failures = []
    for path in sys.argv[1:]:
        with open(path) as f:
            for index, doc in enumerate(yaml.safe_load_all(f)):
                if doc is None:
                    continue
                for version in VERSIONS:
                    try:
                        kubernetes_validate.validate(doc, version, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        failures.append(f"{path} document {index} ({doc.get('kind')}) on {version}: {e.message} at {'/'.join(map(str, e.path))}")
                    except Exception as e:  # an unknown kind or version
                        failures.append(f"{path} document {index} on {version}: {e}")
                documents.append({"file": path, "doc": doc})
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"versions": VERSIONS, "documents": documents}))


if __name__ == "__main__":
    main()
