"""Whether a run's subnets reach the AWS services its roles call, and whether its
security groups let the roles and the runner talk: pure, on EC2's own answers
(:class:`VpcFacts`, read by :func:`flowrig.backends.aws.preflight.vpc.read_facts`).

A subnet's route table is its explicit association, else the VPC's main table. A
``0.0.0.0/0`` route to an available NAT gateway reaches everything. One to an internet
gateway does only for roles that get a public address. Without either, each service
needs its VPC endpoint: interface endpoints (``ecr.api``, ``ecr.dkr``, ``logs``,
``secretsmanager``) with private DNS and a subnet in the run subnet's zone, whose
security groups admit TCP 443 from the roles; and the ``s3`` gateway endpoint (image
layers are in S3) on the subnet's route table. A route to anything else (a transit
gateway, a peering, an instance) is not followed: it is "not checked".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from flowrig.backends.preflight import Check
from flowrig.roles import SCHEDULER_PORT

#: What a role reaches ECR and the rest through, in words.
_INTERFACE = "Interface"
_GATEWAY = "Gateway"
#: Endpoint service (``com.amazonaws.REGION.`` + this) -> its endpoint type.
ENDPOINT_TYPES = {
    "ecr.api": _INTERFACE,
    "ecr.dkr": _INTERFACE,
    "s3": _GATEWAY,
    "logs": _INTERFACE,
    "secretsmanager": _INTERFACE,
}
_ANYWHERE = "0.0.0.0/0"
_USABLE = ("available", "pending", "pendingacceptance")


@dataclass(frozen=True)
class VpcFacts:
    """What EC2 says about one VPC, as its Describe calls return it."""

    vpc_id: str
    region: str
    cidrs: tuple[str, ...]
    #: Every subnet of the VPC: id -> its DescribeSubnets item.
    subnets: Mapping[str, Mapping[str, Any]]
    route_tables: tuple[Mapping[str, Any], ...]
    #: NAT gateway id -> state.
    nat_gateways: Mapping[str, str]
    endpoints: tuple[Mapping[str, Any], ...]
    #: Security group id -> its DescribeSecurityGroups item (the run's and the endpoints').
    groups: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def default_group(self) -> str | None:
        return next((g for g, item in self.groups.items() if item.get("GroupName") == "default"), None)


# --- routes ---------------------------------------------------------------------------------
def route_table_of(subnet_id: str, tables: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The subnet's route table: its explicit association, else the VPC's main one."""
    tables = list(tables)
    for table in tables:
        if any(a.get("SubnetId") == subnet_id for a in table.get("Associations", ())):
            return table
    return next((t for t in tables if any(a.get("Main") for a in t.get("Associations", ()))), None)


def default_route(table: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The table's active ``0.0.0.0/0`` route, if any."""
    for route in (table or {}).get("Routes", ()):
        if route.get("DestinationCidrBlock") == _ANYWHERE and route.get("State", "active") == "active":
            return route
    return None


def egress_of(route: Mapping[str, Any] | None, nat_gateways: Mapping[str, str]) -> tuple[str, str]:
    """``(kind, target)`` of a default route: ``nat``, ``nat-down``, ``igw``, ``other`` or ``none``."""
    if route is None:
        return "none", ""
    nat = route.get("NatGatewayId")
    if nat:
        return ("nat" if nat_gateways.get(nat) == "available" else "nat-down"), nat
    gateway = str(route.get("GatewayId") or "")
    if gateway.startswith("igw-"):
        return "igw", gateway
    for key in ("TransitGatewayId", "InstanceId", "VpcPeeringConnectionId", "NetworkInterfaceId", "GatewayId"):
        if route.get(key):
            return "other", str(route[key])
    return "none", ""


def route_checks(
    facts: VpcFacts, subnets: Iterable[str], public_ip: bool, services: Iterable[str],
    public_option: str = "fargate_use_private_ip = false",
) -> tuple[list[Check], list[str]]:
    """One check per subnet, and the subnets that reach AWS through endpoints only;
    ``public_option``: the option that gives the roles public addresses."""
    checks, needing = [], []
    wanted = ", ".join(services)
    any_endpoint = bool(facts.endpoints)
    for subnet in subnets:
        if subnet not in facts.subnets:
            checks.append(Check("network", subnet, False, f"subnet {subnet} is not in VPC {facts.vpc_id}",
                                "name subnets of that VPC in [cluster.options], or set vpc to the subnet's VPC"))
            continue
        table = route_table_of(subnet, facts.route_tables)
        table_id = (table or {}).get("RouteTableId", "its route table")
        kind, target = egress_of(default_route(table), facts.nat_gateways)
        if kind == "nat":
            checks.append(Check("network", subnet, True, f"routes 0.0.0.0/0 to NAT gateway {target}"))
            continue
        if kind == "igw" and public_ip:
            checks.append(Check("network", subnet, True, f"routes 0.0.0.0/0 to {target}; roles get public addresses"))
            continue
        if kind == "other":
            checks.append(Check("network", subnet, None, f"routes 0.0.0.0/0 to {target}: where that leads is "
                                "not checked"))
            continue
        why = {
            "nat-down": f"its NAT gateway {target} is not available",
            "igw": f"it routes to {target} but the roles get no public address",
            "none": "it has no 0.0.0.0/0 route",
        }[kind]
        needing.append(subnet)
        if any_endpoint:
            checks.append(Check("network", subnet, True, f"{why}: it reaches AWS through VPC endpoints only"))
            continue
        fix = (f"add a route 0.0.0.0/0 to a NAT gateway in {table_id}, or create VPC endpoints for {wanted}")
        if kind == "igw":
            fix = f"set {public_option}, " + fix.replace("add a route", "or add a route", 1)
        checks.append(Check("network", subnet, False, f"subnet {subnet} cannot reach ECR: {why} and VPC "
                            f"{facts.vpc_id} has no VPC endpoints", fix))
    return checks, needing


# --- endpoints ---------------------------------------------------------------------------------
def _endpoint(facts: VpcFacts, service: str) -> Mapping[str, Any] | None:
    name = f"com.amazonaws.{facts.region}.{service}"
    for endpoint in facts.endpoints:
        if endpoint.get("ServiceName") == name and endpoint.get("VpcEndpointType", _INTERFACE) == ENDPOINT_TYPES[
            service
        ] and str(endpoint.get("State", "available")).lower() in _USABLE:
            return endpoint
    return None


def _create_command(facts: VpcFacts, service: str, subnets: list[str], tables: list[str]) -> str:
    base = (f"aws ec2 create-vpc-endpoint --vpc-id {facts.vpc_id} --service-name com.amazonaws.{facts.region}."
            f"{service} --vpc-endpoint-type {ENDPOINT_TYPES[service]}")
    if ENDPOINT_TYPES[service] == _GATEWAY:
        return f"{base} --route-table-ids {' '.join(tables)}"
    return f"{base} --subnet-ids {' '.join(subnets)} --private-dns-enabled"


def endpoint_checks(
    facts: VpcFacts, subnets: list[str], services: Iterable[str], role_groups: Iterable[str]
) -> list[Check]:
    """One check per service the ``subnets`` (which have no other way out) reach by its
    endpoint; ``role_groups``: the roles' security groups (empty: one the run makes)."""
    if not subnets or not facts.endpoints:
        return []
    tables = {s: str((route_table_of(s, facts.route_tables) or {}).get("RouteTableId", "")) for s in subnets}
    checks = []
    for service in services:
        endpoint = _endpoint(facts, service)
        if endpoint is None:
            checks.append(Check(
                "endpoint", service, False,
                f"VPC {facts.vpc_id} has no {service} endpoint and {', '.join(subnets)} has no NAT route",
                _create_command(facts, service, subnets, sorted(set(tables.values()))),
            ))
            continue
        ident = endpoint.get("VpcEndpointId", "")
        if ENDPOINT_TYPES[service] == _GATEWAY:
            missing = sorted({t for t in tables.values() if t not in endpoint.get("RouteTableIds", ())})
            if missing:
                checks.append(Check("endpoint", service, False, f"endpoint {ident} is not on route table "
                                    f"{', '.join(missing)}", f"aws ec2 modify-vpc-endpoint --vpc-endpoint-id {ident} "
                                    f"--add-route-table-ids {' '.join(missing)}"))
            else:
                checks.append(Check("endpoint", service, True, f"{ident} is on the subnets' route tables"))
            continue
        checks.append(_interface_check(facts, service, endpoint, subnets, role_groups))
    return checks


def _interface_check(
    facts: VpcFacts, service: str, endpoint: Mapping[str, Any], subnets: list[str], role_groups: Iterable[str]
) -> Check:
    ident = endpoint.get("VpcEndpointId", "")
    if not endpoint.get("PrivateDnsEnabled", False):
        return Check("endpoint", service, False, f"endpoint {ident} has private DNS off: the roles resolve the "
                     "service's public name", f"aws ec2 modify-vpc-endpoint --vpc-endpoint-id {ident} "
                     "--private-dns-enabled")
    zones = {facts.subnets.get(s, {}).get("AvailabilityZone") for s in endpoint.get("SubnetIds", ())}
    uncovered = [s for s in subnets if facts.subnets.get(s, {}).get("AvailabilityZone") not in zones]
    if uncovered:
        return Check("endpoint", service, False, f"endpoint {ident} has no subnet in the zone of "
                     f"{', '.join(uncovered)}", f"aws ec2 modify-vpc-endpoint --vpc-endpoint-id {ident} "
                     f"--add-subnet-ids {' '.join(uncovered)}")
    groups = [g.get("GroupId", "") for g in endpoint.get("Groups", ())] or [facts.default_group() or ""]
    sources = set(role_groups)
    if not admits(facts, groups, 443, sources):
        cidr = facts.cidrs[0] if facts.cidrs else "VPC-CIDR"
        return Check("endpoint", service, False, f"endpoint {ident}'s security groups {', '.join(groups)} admit "
                     "no TCP 443 from the roles", f"aws ec2 authorize-security-group-ingress --group-id {groups[0]} "
                     f"--protocol tcp --port 443 --cidr {cidr}")
    return Check("endpoint", service, True, f"{ident}: private DNS, in the subnets' zones, admits TCP 443")


# --- security groups -------------------------------------------------------------------------------
def covers_port(permission: Mapping[str, Any], port: int | None) -> bool:
    """Whether a rule's protocol and port range take TCP ``port`` (``None``: every port)."""
    protocol = str(permission.get("IpProtocol", ""))
    if protocol in ("-1", "all"):
        return True
    if protocol not in ("tcp", "6"):
        return False
    low, high = int(permission.get("FromPort", -1)), int(permission.get("ToPort", -1))
    if port is None:
        return low <= 0 and high >= 65535 or (low, high) == (-1, -1)
    return low <= port <= high or (low, high) == (-1, -1)


def _from(permission: Mapping[str, Any], groups: set[str], cidrs: Iterable[str]) -> bool:
    """Whether a rule's sources hold one of ``groups``, or a range around every one of ``cidrs``."""
    if any(pair.get("GroupId") in groups for pair in permission.get("UserIdGroupPairs", ())):
        return True
    wanted = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    for item in permission.get("IpRanges", ()):
        network = ipaddress.ip_network(item.get("CidrIp", "255.255.255.255/32"), strict=False)
        if wanted and all(w.version == network.version and w.subnet_of(network) for w in wanted):
            return True
    return False


def admits(facts: VpcFacts, groups: Iterable[str], port: int | None, sources: set[str]) -> bool:
    """Whether any of ``groups`` admits TCP ``port`` from ``sources`` or from the whole VPC."""
    for group in groups:
        for permission in facts.groups.get(group, {}).get("IpPermissions", ()):
            if covers_port(permission, port) and _from(permission, sources, facts.cidrs):
                return True
    return False


def lets_out(facts: VpcFacts, groups: Iterable[str], port: int) -> bool:
    """Whether any of ``groups`` lets TCP ``port`` out (to anywhere a rule names)."""
    for group in groups:
        for permission in facts.groups.get(group, {}).get("IpPermissionsEgress", ()):
            if covers_port(permission, port):
                return True
    return False


def group_checks(facts: VpcFacts, groups: list[str], *, scheduler_port: int = SCHEDULER_PORT) -> list[Check]:
    """The project's own security groups (a group the run makes has known rules): the
    scheduler's port open to the VPC (where the runner is), every TCP port between the
    roles, and TCP 443 out (ECR, S3, logs, secrets)."""
    if not groups:
        return []
    unknown = [g for g in groups if g not in facts.groups]
    if unknown:
        return [Check("security-group", ", ".join(unknown), False, f"security group {', '.join(unknown)} is not "
                      f"in VPC {facts.vpc_id}", "name security groups of the run's VPC in [cluster.options]")]
    named, first = ", ".join(groups), groups[0]
    cidr = facts.cidrs[0] if facts.cidrs else "VPC-CIDR"
    checks = []
    if admits(facts, groups, scheduler_port, set()):
        checks.append(Check("security-group", named, True, f"admits TCP {scheduler_port} from the VPC"))
    else:
        checks.append(Check(
            "security-group", named, False,
            f"{named} admit no TCP {scheduler_port} (the scheduler's port) from the VPC ({cidr}): the runner "
            "cannot reach the scheduler",
            f"aws ec2 authorize-security-group-ingress --group-id {first} --protocol tcp --port {scheduler_port} "
            f"--cidr {cidr}",
        ))
    if admits(facts, groups, None, set(groups)):
        checks.append(Check("security-group", named, True, "admits every TCP port between the roles"))
    else:
        checks.append(Check(
            "security-group", named, False,
            f"{named} do not admit every TCP port between the run's roles (workers listen on random ports)",
            f"aws ec2 authorize-security-group-ingress --group-id {first} --protocol tcp --port 0-65535 "
            f"--source-group {first}",
        ))
    if lets_out(facts, groups, 443):
        checks.append(Check("security-group", named, True, "lets TCP 443 out"))
    else:
        checks.append(Check(
            "security-group", named, False, f"{named} let no TCP 443 out: the roles cannot reach ECR",
            f"aws ec2 authorize-security-group-egress --group-id {first} --protocol tcp --port 443 --cidr 0.0.0.0/0",
        ))
    return checks


def network_checks(
    facts: VpcFacts, subnets: list[str], groups: list[str], *, public_ip: bool, services: Iterable[str],
    public_option: str = "fargate_use_private_ip = false", scheduler_port: int = SCHEDULER_PORT,
) -> list[Check]:
    """Every network check of one run: routes, endpoints, the project's security groups."""
    services = list(services)
    checks, needing = route_checks(facts, subnets, public_ip, services, public_option)
    checks += endpoint_checks(facts, needing, services, groups)
    checks += group_checks(facts, groups, scheduler_port=scheduler_port)
    return checks
