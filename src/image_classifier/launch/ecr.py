"""ECR for scripts/build_and_push.sh: the registry, repositories made if missing, the login password.

Usage: python -m image_classifier.launch.ecr repositories NAME... [--region R]   (prints the registry)
       python -m image_classifier.launch.ecr registry [--region R]              (the same, creating nothing)
       python -m image_classifier.launch.ecr password [--region R]              (prints the password)
"""

from __future__ import annotations

import argparse
import base64
import sys

import boto3

from image_classifier.launch.exit_codes import LAUNCHER, exit_on


def ensure_repositories(ecr_client, names: list[str]) -> str:
    """Create the repositories that do not exist yet; return the registry host
    (`<account>.dkr.ecr.<region>.amazonaws.com`)."""
    for name in names:
        try:
            ecr_client.create_repository(repositoryName=name, imageScanningConfiguration={"scanOnPush": True})
        except ecr_client.exceptions.RepositoryAlreadyExistsException:
            pass
    uri = ecr_client.describe_repositories(repositoryNames=names[:1])["repositories"][0]["repositoryUri"]
    return uri.split("/", 1)[0]


def registry_of(sts_client, region: str) -> str:
    """The account's registry host, from STS's GetCallerIdentity (creates nothing)."""
    return f"{sts_client.get_caller_identity()['Account']}.dkr.ecr.{region}.amazonaws.com"


def login_password(ecr_client) -> str:
    """The password for `docker login --username AWS` (GetAuthorizationToken, base64 of `AWS:<password>`)."""
    token = ecr_client.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    _user, _, password = base64.b64decode(token).decode().partition(":")
    return password


@exit_on(LAUNCHER)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m image_classifier.launch.ecr", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("repositories", "registry", "password"))
    parser.add_argument("names", nargs="*", help="repositories: their names")
    parser.add_argument("--region", default=None)
    args = parser.parse_args(argv)
    session = boto3.Session(region_name=args.region)
    ecr = session.client("ecr")
    if args.command == "registry":
        print(registry_of(session.client("sts"), ecr.meta.region_name))
    elif args.command == "repositories":
        if not args.names:
            parser.error("repositories needs at least one name")
        print(ensure_repositories(ecr, args.names))
    else:
        print(login_password(ecr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
