"""Validates FHIR R4 JSON resources against the published fhir.schema.json.

Usage: validate.py SCHEMA FILE...  Each FILE holds one resource. Prints every
violation (and, for a Bundle, of which entry) and exits 1 if there is any.
"""
import json
import sys

import jsonschema


def main() -> int:
    schema_path, files = sys.argv[1], sys.argv[2:]
    with open(schema_path, encoding="utf-8") as handle:
        schema = json.load(handle)
    definitions = schema["definitions"]
    # This schema is the build HL7 published with R4 4.0.0; R4's technical
    # correction 4.0.1 changed no JSON structure, only added its own version code.
    for definition in definitions.values():
        for field in definition.get("properties", {}).values():
            versions = field.get("enum")
            if isinstance(versions, list) and "4.0.0" in versions and "4.0.1" not in versions:
                versions.append("4.0.1")
    failed = 0
    for path in files:
        with open(path, encoding="utf-8") as handle:
            resource = json.load(handle)
        kind = resource.get("resourceType")
        if kind not in definitions:
            print(f"{path}: unknown resourceType {kind!r}")
            failed += 1
            continue
        # The resource's own definition, resolving references against the whole schema.
        validator = jsonschema.Draft6Validator(
            {"$ref": f"#/definitions/{kind}", "definitions": definitions}
        )
        for error in validator.iter_errors(resource):
            # Errors inside a oneOf (entry.resource) are reported by their best match.
            best = jsonschema.exceptions.best_match([error])
            where = "/".join(str(part) for part in best.absolute_path)
            print(f"{path}: {kind} at /{where}: {best.message[:300]}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
