"""The read-only EC2 calls behind the network checks: one VPC's subnets, route
tables, NAT gateways, endpoints and security groups (:class:`VpcFacts`)."""

from __future__ import annotations

from typing import Any

from flowrig.backends.aws.preflight.answers import Refused
from flowrig.backends.aws.preflight.network import VpcFacts
from flowrig.backends.aws.session import Session, aws_errors, denied
from flowrig.errors import BadInput, one_line


def _all(client: Any, operation: str, key: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a paginated Describe call."""
    items: list[dict[str, Any]] = []
    for page in client.get_paginator(operation).paginate(**params):
        items += page.get(key, [])
    return items


def find_vpc(session: Session, vpc: str | None, subnets: tuple[str, ...] | None) -> str:
    """The run's VPC: named, else the first named subnet's, else the region's default.

    Raises
    ------
    BadInput
        No default VPC and none named; a named subnet that does not exist.
    """
    ec2 = session.client("ec2")
    if vpc and vpc != "default":
        return vpc
    if subnets:
        with aws_errors(f"describing subnet {subnets[0]}"):
            found = ec2.describe_subnets(Filters=[{"Name": "subnet-id", "Values": [subnets[0]]}])["Subnets"]
        if not found:
            raise BadInput(f"subnet {subnets[0]} does not exist in {session.region_name}: fix subnets in "
                           "[cluster.options]")
        return str(found[0]["VpcId"])
    with aws_errors("looking up the default VPC"):
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise BadInput(f"region {session.region_name} has no default VPC: set vpc and subnets in [cluster.options]")
    return str(vpcs[0]["VpcId"])


def read_facts(session: Session, vpc_id: str, groups: tuple[str, ...]) -> VpcFacts | Refused:
    """What EC2 says about ``vpc_id`` and the security groups that matter to a run
    (``groups``, the endpoints' and the VPC's default one); :class:`Refused` when the
    runner may not read them (a policy from before the preflight checks).

    Raises
    ------
    BadInput
        The VPC does not exist.
    """
    from botocore import exceptions as bx

    with aws_errors(f"reading the network of VPC {vpc_id}"):
        try:
            return _read_facts(session, vpc_id, groups)
        except bx.ClientError as exc:
            if not denied(exc):
                raise
            error = exc.response.get("Error", {})
            return Refused(str(error.get("Code", "AccessDenied")), one_line(str(error.get("Message", "")), 200))


def _read_facts(session: Session, vpc_id: str, groups: tuple[str, ...]) -> VpcFacts:
    ec2 = session.client("ec2")
    in_vpc = [{"Name": "vpc-id", "Values": [vpc_id]}]
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Vpcs"]
    if not vpcs:
        raise BadInput(f"VPC {vpc_id} does not exist in {session.region_name}: fix vpc in [cluster.options]")
    cidrs = [vpcs[0]["CidrBlock"]] + [
        a["CidrBlock"] for a in vpcs[0].get("CidrBlockAssociationSet", [])
        if a.get("CidrBlockState", {}).get("State", "associated") == "associated"
        and a.get("CidrBlock") != vpcs[0]["CidrBlock"]
    ]
    subnets = _all(ec2, "describe_subnets", "Subnets", Filters=in_vpc)
    tables = _all(ec2, "describe_route_tables", "RouteTables", Filters=in_vpc)
    nats = _all(ec2, "describe_nat_gateways", "NatGateways", Filter=in_vpc)
    endpoints = _all(ec2, "describe_vpc_endpoints", "VpcEndpoints", Filters=in_vpc)
    wanted = set(groups) | {g["GroupId"] for e in endpoints for g in e.get("Groups", [])}
    found = _all(ec2, "describe_security_groups", "SecurityGroups", Filters=in_vpc)
    return VpcFacts(
        vpc_id=vpc_id,
        region=session.region_name,
        cidrs=tuple(cidrs),
        subnets={s["SubnetId"]: s for s in subnets},
        route_tables=tuple(tables),
        nat_gateways={n["NatGatewayId"]: str(n.get("State", "")) for n in nats},
        endpoints=tuple(endpoints),
        groups={g["GroupId"]: g for g in found if g["GroupId"] in wanted or g.get("GroupName") == "default"},
    )
