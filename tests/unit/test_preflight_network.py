"""The network checks of preflight, on EC2's answers written out by hand: a subnet's
route table, its way out (NAT gateway, internet gateway, nothing), the VPC endpoints
it needs without one, and the rules of the project's security groups."""

from __future__ import annotations

from flowrig.backends.aws.preflight.network import (
    VpcFacts,
    covers_port,
    egress_of,
    endpoint_checks,
    group_checks,
    network_checks,
    route_table_of,
)

SERVICES = ["ecr.api", "ecr.dkr", "s3", "logs", "secretsmanager"]
VPC_CIDR = "10.0.0.0/16"


def table(ident: str, *, subnets=(), main=False, default: dict | None = None) -> dict:
    associations = [{"SubnetId": s} for s in subnets] + ([{"Main": True}] if main else [])
    routes = [{"DestinationCidrBlock": VPC_CIDR, "GatewayId": "local", "State": "active"}]
    if default is not None:
        routes.append({"DestinationCidrBlock": "0.0.0.0/0", "State": "active", **default})
    return {"RouteTableId": ident, "Associations": associations, "Routes": routes}


def interface(service: str, *, subnets=("subnet-a", "subnet-b"), dns=True, groups=("sg-endpoint",)) -> dict:
    return {"VpcEndpointId": f"vpce-{service}", "ServiceName": f"com.amazonaws.us-east-1.{service}",
            "VpcEndpointType": "Interface", "State": "available", "SubnetIds": list(subnets),
            "PrivateDnsEnabled": dns, "Groups": [{"GroupId": g} for g in groups]}


def gateway(tables=("rtb-private",)) -> dict:
    return {"VpcEndpointId": "vpce-s3", "ServiceName": "com.amazonaws.us-east-1.s3", "VpcEndpointType": "Gateway",
            "State": "available", "RouteTableIds": list(tables)}


def rule(protocol="tcp", low=None, high=None, cidrs=(), groups=()) -> dict:
    found = {"IpProtocol": protocol, "IpRanges": [{"CidrIp": c} for c in cidrs],
             "UserIdGroupPairs": [{"GroupId": g} for g in groups]}
    if low is not None:
        found.update(FromPort=low, ToPort=high if high is not None else low)
    return found


ENDPOINT_GROUP = {"GroupId": "sg-endpoint", "GroupName": "endpoints", "IpPermissions": [rule(low=443, cidrs=[VPC_CIDR])]}


def facts(tables, *, endpoints=(), nats=None, groups=None) -> VpcFacts:
    return VpcFacts(
        vpc_id="vpc-1", region="us-east-1", cidrs=(VPC_CIDR,),
        subnets={"subnet-a": {"SubnetId": "subnet-a", "AvailabilityZone": "us-east-1a"},
                 "subnet-b": {"SubnetId": "subnet-b", "AvailabilityZone": "us-east-1b"}},
        route_tables=tuple(tables), nat_gateways=nats or {}, endpoints=tuple(endpoints),
        groups={"sg-endpoint": ENDPOINT_GROUP, **(groups or {})},
    )


def failed(checks) -> list:
    return [c for c in checks if c.ok is False]


# --- routes ---------------------------------------------------------------------------------
def test_a_subnet_without_an_explicit_table_uses_the_main_one():
    main, own = table("rtb-main", main=True), table("rtb-own", subnets=["subnet-b"])
    assert route_table_of("subnet-a", [own, main])["RouteTableId"] == "rtb-main"
    assert route_table_of("subnet-b", [own, main])["RouteTableId"] == "rtb-own"


def test_the_way_out_is_named_by_its_target():
    assert egress_of({"NatGatewayId": "nat-1"}, {"nat-1": "available"}) == ("nat", "nat-1")
    assert egress_of({"NatGatewayId": "nat-1"}, {"nat-1": "deleted"}) == ("nat-down", "nat-1")
    assert egress_of({"GatewayId": "igw-1"}, {}) == ("igw", "igw-1")
    assert egress_of({"TransitGatewayId": "tgw-1"}, {}) == ("other", "tgw-1")
    assert egress_of(None, {}) == ("none", "")


def test_a_nat_route_passes_and_needs_no_endpoint():
    vpc = facts([table("rtb-main", main=True, default={"NatGatewayId": "nat-1"})], nats={"nat-1": "available"})
    checks = network_checks(vpc, ["subnet-a"], [], public_ip=False, services=SERVICES)
    assert [(c.name, c.ok) for c in checks] == [("network", True)]


def test_no_way_out_and_no_endpoint_is_one_line_naming_both_fixes():
    vpc = facts([table("rtb-private", main=True)])
    [check] = failed(network_checks(vpc, ["subnet-a"], [], public_ip=False, services=SERVICES))
    assert check.subject == "subnet-a" and "cannot reach ECR" in check.line
    assert "NAT gateway in rtb-private" in check.fix and "ecr.dkr" in check.fix


def test_an_internet_gateway_counts_only_with_public_addresses():
    vpc = facts([table("rtb-public", main=True, default={"GatewayId": "igw-1"})])
    assert not failed(network_checks(vpc, ["subnet-a"], [], public_ip=True, services=SERVICES))
    [check] = failed(network_checks(vpc, ["subnet-a"], [], public_ip=False, services=SERVICES))
    assert "igw-1" in check.line and "no public address" in check.line
    assert check.fix.startswith("set fargate_use_private_ip = false")


def test_a_route_to_something_else_is_not_checked_rather_than_guessed():
    vpc = facts([table("rtb-main", main=True, default={"TransitGatewayId": "tgw-9"})])
    [check] = network_checks(vpc, ["subnet-a"], [], public_ip=False, services=SERVICES)
    assert check.ok is None and "tgw-9" in check.line


def test_a_subnet_of_another_vpc_fails():
    vpc = facts([table("rtb-main", main=True)])
    [check] = failed(network_checks(vpc, ["subnet-z"], [], public_ip=False, services=SERVICES))
    assert "not in VPC vpc-1" in check.line


# --- endpoints -------------------------------------------------------------------------------
def _all_endpoints(**changes):
    endpoints = {s: interface(s) for s in SERVICES if s != "s3"}
    endpoints["s3"] = gateway()
    endpoints.update(changes)
    return [e for e in endpoints.values() if e is not None]


def test_endpoints_for_every_service_pass():
    vpc = facts([table("rtb-private", main=True)], endpoints=_all_endpoints())
    checks = network_checks(vpc, ["subnet-a"], [], public_ip=False, services=SERVICES)
    assert not failed(checks) and len([c for c in checks if c.name == "endpoint"]) == 5


def test_one_missing_endpoint_is_one_line_with_the_create_command():
    vpc = facts([table("rtb-private", main=True)], endpoints=_all_endpoints(**{"ecr.dkr": None}))
    [check] = failed(network_checks(vpc, ["subnet-a"], [], public_ip=False, services=SERVICES))
    assert check.subject == "ecr.dkr" and "no ecr.dkr endpoint" in check.line
    assert check.fix == ("aws ec2 create-vpc-endpoint --vpc-id vpc-1 --service-name com.amazonaws.us-east-1.ecr.dkr "
                         "--vpc-endpoint-type Interface --subnet-ids subnet-a --private-dns-enabled")


def test_endpoint_faults_name_their_fix():
    base = [table("rtb-private", main=True)]
    cases = {
        "private DNS off": _all_endpoints(logs=interface("logs", dns=False)),
        "--add-subnet-ids subnet-b": _all_endpoints(logs=interface("logs", subnets=("subnet-a",))),
        "--add-route-table-ids rtb-private": _all_endpoints(s3=gateway(tables=("rtb-other",))),
    }
    for words, endpoints in cases.items():
        subnets = ["subnet-b"] if "subnet-b" in words else ["subnet-a"]
        [check] = failed(endpoint_checks(facts(base, endpoints=endpoints), subnets, SERVICES, []))
        assert words in check.line + check.fix, (words, check)


def test_an_endpoint_whose_group_admits_no_443_from_the_roles_fails():
    closed = {"GroupId": "sg-closed", "GroupName": "closed", "IpPermissions": [rule(low=80, cidrs=[VPC_CIDR])]}
    endpoints = _all_endpoints(logs=interface("logs", groups=("sg-closed",)))
    vpc = facts([table("rtb-private", main=True)], endpoints=endpoints, groups={"sg-closed": closed})
    [check] = failed(endpoint_checks(vpc, ["subnet-a"], SERVICES, []))
    assert "admit no TCP 443" in check.line and "--group-id sg-closed --protocol tcp --port 443" in check.fix
    # A rule naming the roles' own group is as good as the VPC's range.
    closed["IpPermissions"].append(rule(low=443, groups=["sg-team"]))
    assert not failed(endpoint_checks(vpc, ["subnet-a"], SERVICES, ["sg-team"]))


# --- security groups ---------------------------------------------------------------------------
def test_port_ranges_and_protocols():
    assert covers_port(rule("-1"), 8786) and covers_port(rule("-1"), None)
    assert covers_port(rule(low=8000, high=9000), 8786) and not covers_port(rule(low=443), 8786)
    assert covers_port(rule(low=0, high=65535), None) and not covers_port(rule(low=1024, high=65535), None)
    assert not covers_port(rule("udp", low=0, high=65535), 8786)


def _group(*ingress, egress=(rule("-1", cidrs=["0.0.0.0/0"]),)) -> dict:
    return {"sg-team": {"GroupId": "sg-team", "GroupName": "team", "IpPermissions": list(ingress),
                        "IpPermissionsEgress": list(egress)}}


def test_a_good_project_group_passes_every_check():
    groups = _group(rule(low=8786, cidrs=[VPC_CIDR]), rule(low=0, high=65535, groups=["sg-team"]))
    checks = group_checks(facts([], groups=groups), ["sg-team"])
    assert [c.ok for c in checks] == [True, True, True]


def test_a_group_without_the_scheduler_port_is_one_line():
    groups = _group(rule(low=0, high=65535, groups=["sg-team"]))
    [check] = failed(group_checks(facts([], groups=groups), ["sg-team"]))
    assert "8786" in check.line and check.fix.endswith("--protocol tcp --port 8786 --cidr 10.0.0.0/16")


def test_a_range_narrower_than_the_vpc_does_not_admit_the_runner():
    groups = _group(rule(low=8786, cidrs=["10.0.5.0/24"]), rule(low=0, high=65535, groups=["sg-team"]))
    assert [c.subject for c in failed(group_checks(facts([], groups=groups), ["sg-team"]))] == ["sg-team"]
    wide = _group(rule(low=8786, cidrs=["0.0.0.0/0"]), rule(low=0, high=65535, groups=["sg-team"]))
    assert not failed(group_checks(facts([], groups=wide), ["sg-team"]))


def test_no_traffic_between_members_and_no_443_out_each_fail():
    groups = _group(rule(low=8786, cidrs=[VPC_CIDR]), egress=(rule(low=80, cidrs=["0.0.0.0/0"]),))
    lines = [c.line for c in failed(group_checks(facts([], groups=groups), ["sg-team"]))]
    assert len(lines) == 2 and "between the run's roles" in lines[0] and "no TCP 443 out" in lines[1]


def test_an_unknown_group_fails_once():
    [check] = group_checks(facts([]), ["sg-missing"])
    assert check.ok is False and "not in VPC vpc-1" in check.line
