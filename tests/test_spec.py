"""The programmatic builder (miras.spec): builders = text front end, replace, space, errors."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

import miras
import miras.spec as S
from miras import catalog, ir
from miras.spec import (
    Rejected,
    Spec,
    algorithm,
    chunk,
    decay,
    definitions,
    dot,
    elastic_net,
    exact,
    gate,
    gated_mlp,
    gd,
    huber,
    hybrid,
    implicit_gd,
    kl,
    l1,
    l2,
    learned,
    lp,
    lq,
    mac,
    matrix,
    memory,
    mlp,
    model,
    momentum,
    muon,
    per_head,
    poly,
    retention,
    samba,
    sketch,
    sliding,
    space,
    vector,
    window,
)

# ---- builders produce the IR the text front end produces -------------------------------------

TITANS = """
model titans {
    memory = mlp(depth=2, expansion=4, act=gelu)
    bias = l2
    retention = decay(alpha=gate(act=sigmoid), at=prev)
    algorithm = momentum(lr=gate(scale=0.1), beta=gate())
    parallel = chunk(size=64)
}
"""


def _cases() -> list[tuple[str, Spec, str]]:
    """(id, spec built in Python, the same spec as text) across every axis."""

    def m(name: str, text_fields: str, **fields: Any) -> tuple[str, Spec, str]:
        return name, model(name, **fields), f"model {name} {{ {text_fields} }}"

    return [
        ("titans", model("titans", memory=mlp(depth=2, expansion=4, act="gelu"), bias=l2,
                         retention=decay(alpha=gate(act="sigmoid"), at="prev"),
                         algorithm=momentum(lr=gate(scale=0.1), beta=gate()),
                         parallel=chunk(size=64)), TITANS),
        m("retnet", "memory = matrix bias = dot retention = decay(alpha=per_head(1 - 2^(-5 - h))) "
          "algorithm = gd(lr=1)",
          memory=matrix, bias=dot(), retention=decay(alpha=per_head("1 - 2^(-5 - h)")),
          algorithm=gd(lr=1)),
        m("gdn", "memory = matrix bias = l2 retention = decay(alpha=gate(act=mamba), at=decayed) "
          "algorithm = gd(lr=gate()) parallel = exact(size=32) heads = 8 head_dim = 64",
          memory=matrix(), bias=l2(), retention=decay(alpha=gate(act="mamba"), at="decayed"),
          algorithm=gd(lr=gate()), parallel=exact(32), heads=8, head_dim=64),
        m("moneta", "memory = mlp(2, 2, silu, false, rmsnorm) bias = lp(3, tanh) "
          "retention = lq(q=4, alpha=gate(channel=true, rank=16), form=ftrl) "
          "algorithm = gd(lr=learned(init=0.5))",
          memory=mlp(2, 2, "silu", False, "rmsnorm"), bias=lp(3, "tanh"),
          retention=lq(q=4, alpha=gate(channel=True, rank=16), form="ftrl"),
          algorithm=gd(lr=learned(init=0.5))),
        m("memora", "memory = gated_mlp(expansion=2.5, init=uniform) "
          "bias = huber(delta=gate(act=softplus)) retention = kl(alpha=0.99, softmax_axis=all) "
          "algorithm = muon(lr=1/16, steps=3) read = before_write",
          memory=gated_mlp(expansion=2.5, init="uniform"), bias=huber(delta=gate(act="softplus")),
          retention=kl(alpha=0.99, softmax_axis="all"), algorithm=muon(lr=1 / 16, steps=3),
          read="before_write"),
        m("swla", "memory = nonparametric(kernel=poly, degree=2) bias = l2 retention = none "
          "algorithm = nonparametric window = sliding(size=128)",
          memory=memory.nonparametric(kernel="poly", degree=2), bias=l2,
          retention=retention.none, algorithm=algorithm.nonparametric, window=sliding(128)),
        m("omega", "memory = vector(init=uniform) bias = l2 "
          "retention = bregman(potential=logit, alpha=gate(per=chunk)) "
          "algorithm = implicit_gd(lr=0.5) feature = poly(degree=3, learnable=false) "
          "window = sliding(size=4, gamma=gate(init=0.9)) hybrid = samba(window=1024)",
          memory=vector(init="uniform"), bias=l2,
          retention=S.bregman(potential="logit", alpha=gate(per="chunk")),
          algorithm=implicit_gd(lr=0.5), feature=poly(degree=3, learnable=False),
          window=sliding(size=4, gamma=gate(init=0.9)), hybrid=samba(window=1024)),
        m("sparse", "memory = matrix(init=uniform) bias = huber_norm(delta=2) "
          "retention = elastic_net(alpha=learned(), "
          "threshold=per_head(0.01 * (h + 1)), form=ftrl, smooth=true) "
          "algorithm = momentum(beta=0) feature = sketch(dim=64, degree=2) "
          "hybrid = mac(segment=256, persistent=0)",
          memory=matrix(init="uniform"), bias=S.huber_norm(delta=2),
          retention=elastic_net(alpha=learned(),
                                threshold=per_head("0.01 * (h + 1)"), form="ftrl", smooth=True),
          algorithm=momentum(beta=0), feature=sketch(dim=64, degree=2),
          hybrid=mac(segment=256, persistent=0)),
        m("misc", "memory = matrix(init=uniform) bias = robust_shift(radius=gate()) "
          "retention = fdiv(f=hellinger, scale=2) algorithm = gd(steps=2) "
          "feature = exp_taylor(order=3) parallel = recurrent hybrid = mag(512, 4)",
          memory=matrix(init="uniform"), bias=S.robust_shift(radius=gate()),
          retention=S.fdiv(f="hellinger", scale=2), algorithm=gd(steps=2),
          feature=S.exp_taylor(order=3), parallel=S.recurrent, hybrid=S.mag(512, 4)),
        m("soft", "memory = mlp(depth=1) bias = l1(smooth=none) "
          "retention = soft_threshold(threshold=0) algorithm = gd feature = identity "
          "window = none hybrid = mal(window=64) heads = none",
          memory=mlp(depth=1), bias=l1(smooth="none"), retention=S.soft_threshold(threshold=0),
          algorithm=gd, feature=S.identity, window=None, hybrid=S.mal(window=64), heads=None),
        m("coord", "memory = matrix bias = huber_coord(delta=learned()) retention = none "
          "algorithm = gd", memory=matrix, bias=S.huber_coord(delta=learned()),
          retention=retention.none(), algorithm=gd),
    ]


CASES = _cases()


@pytest.mark.parametrize(("built", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_builder_equals_text_front_end(built: Spec, text: str) -> None:
    assert built.ir == miras.load(text)
    assert built == Spec.from_text(text)
    # and the builder's text reads back as the same IR
    assert miras.load(built.to_miras()) == built.ir
    assert str(built) == built.to_miras()


def _arg_text(v: Any) -> str:
    """The .miras text of a Python argument, written independently of the IR printer."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return v
    if isinstance(v, ir.Gate):
        return "gate(channel=true)" if v.channel else "gate()"
    if isinstance(v, ir.Learned):
        return f"learned(init={v.init!r})"
    raise AssertionError(v)


def _non_default(p: catalog.ParamInfo) -> Any:
    """A valid value of ``p`` that differs from its default."""
    if p.kind == "bool":
        return not p.default
    if p.kind == "enum":
        return next(c for c in reversed(p.choices) if c != p.default)
    if p.kind == "act":
        return "silu"
    if p.kind == "scalar":
        return gate(channel=p.channel_ok) if p.gateable else learned(init=0.5)
    lo = p.ge if p.ge is not None else (p.gt if p.gt is not None else 0)
    if p.kind == "int":
        return int(lo) + 2 if int(lo) + 2 != p.default else int(lo) + 4
    return float(lo) + 0.5 if float(lo) + 0.5 != p.default else float(lo) + 0.25


# A context in which every choice of one axis is valid.
CONTEXT = {"memory": "matrix(init=uniform)", "bias": "l2", "retention": "none",
           "algorithm": "gd"}
NONPARAMETRIC = {"memory": "nonparametric", "algorithm": "nonparametric"}


def _context(axis: str, name: str) -> dict[str, str]:
    ctx = dict(CONTEXT)
    if NONPARAMETRIC.get(axis) == name:
        ctx.update(NONPARAMETRIC)
    return ctx


ENTRIES = [(axis, name) for axis in catalog.AXES for name in catalog.entries(axis)]


@pytest.mark.parametrize(("axis", "name"), ENTRIES, ids=[f"{a}.{n}" for a, n in ENTRIES])
def test_every_builder_every_parameter(axis: str, name: str) -> None:
    entry = catalog.lookup(axis, name)
    assert entry is not None
    builder = S.AXES[axis][name]
    assert builder() == entry.cls()
    kwargs = {p.name: _non_default(p) for p in entry.params.values()}
    built = builder(**kwargs)
    assert builder(*kwargs.values()) == built  # positional args in catalog order
    ctx = _context(axis, name)
    fields = {**ctx, axis: f"{name}({', '.join(f'{k}={_arg_text(v)}' for k, v in kwargs.items())})"}
    text = "model m { " + " ".join(f"{k} = {v}" for k, v in fields.items()) + " }"
    expected = miras.load(text)
    assert getattr(expected, axis) == built
    spec = Spec(expected)
    assert getattr(spec.ir, axis) == built
    assert Spec.from_text(spec.to_miras()) == spec


def test_gate_takes_the_role_of_its_parameter() -> None:
    seen = set()
    for axis in catalog.AXES:
        for name, entry in catalog.entries(axis).items():
            for p in entry.params.values():
                if p.gateable:
                    value = getattr(S.AXES[axis][name](**{p.name: gate()}), p.name)
                    assert value.role == p.role
                    seen.add(p.role)
    assert seen == set(ir.ROLES)
    assert decay(alpha=gate).alpha == ir.Gate(role="decay")  # a bare gate is gate()


def test_numbers_become_const_and_values_pass_through() -> None:
    assert lp(3).p == 3.0 and isinstance(lp(3).p, float)
    assert gd(lr=1 / 16).lr == ir.Const(value=0.0625)
    assert gd(lr=ir.Const(value=0.5)).lr == ir.Const(value=0.5)
    assert mlp(expansion=4).expansion == 4.0
    assert decay(alpha=learned()).alpha == ir.Learned()
    assert per_head("1 - 2^(-5 - h)") == miras.load(
        "model r { memory=matrix bias=dot retention=decay(alpha=per_head(1 - 2^(-5 - h))) "
        "algorithm=gd }").retention.alpha


# ---- naming: per-axis namespaces, flat aliases ------------------------------------------------


def test_namespaces_cover_the_catalog() -> None:
    for axis in catalog.AXES:
        ns = getattr(S, axis)
        assert list(ns) == list(catalog.entries(axis))
        for name in ns:
            assert ns[name].axis == axis and getattr(ns, name) is ns[name]
    assert retention.none() == ir.NoRetention()
    assert window.none() == ir.NoWindow()
    assert hybrid.none() == ir.NoHybrid()
    assert memory.nonparametric() == ir.Nonparametric()
    assert algorithm.nonparametric() == ir.NonparametricAlg()


def test_flat_aliases_are_the_unambiguous_names() -> None:
    owners: dict[str, list[str]] = {}
    for axis in catalog.AXES:
        for name in catalog.entries(axis):
            owners.setdefault(name, []).append(axis)
    for name, axes in owners.items():
        if len(axes) == 1:
            assert getattr(S, name) is S.AXES[axes[0]][name], name
            assert name in S.__all__
        else:
            assert name not in S.__all__
            with pytest.raises(AttributeError, match="several axes"):
                getattr(S, name)
    with pytest.raises(AttributeError, match="did you mean 'mlp'"):
        _ = memory.mlpp


# ---- Spec -------------------------------------------------------------------------------------


def test_replace() -> None:
    titans = Spec.from_text(TITANS)
    yaad = titans.replace(bias=huber(delta=gate()))
    assert yaad.ir == miras.load(TITANS.replace("bias = l2", "bias = huber(delta=gate())"))
    assert yaad.ir.bias.delta.role == "delta"  # type: ignore[union-attr]
    assert titans.ir.bias == ir.L2()  # the original is unchanged
    renamed = titans.replace(name="t2", heads=4, window=sliding(16))
    assert (renamed.name, renamed.ir.heads, renamed.ir.window.kind) == ("t2", 4, "sliding")
    assert renamed.replace(window=None, heads=None, name="titans") == titans
    assert titans.replace() == titans and hash(titans.replace()) == hash(titans)
    with pytest.raises(miras.MirasError) as err:
        titans.replace(bias=kl())
    assert err.value.codes == ["E103"]
    with pytest.raises(miras.MirasError) as err:
        titans.replace(memory=matrix, retention=kl())
    assert err.value.codes == ["E130"]


def test_spec_is_immutable_and_picklable() -> None:
    spec = Spec.from_text(TITANS)
    with pytest.raises(AttributeError):
        spec.name = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        memory.mlp = None  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert repr(spec).startswith("Spec(titans: memory=mlp, bias=l2, retention=decay(")


def test_from_file_and_model_selection(tmp_path: Any) -> None:
    path = tmp_path / "two.miras"
    path.write_text(TITANS + "\nmodel t2 extends titans { bias = dot }\n")
    assert Spec.from_file(path).name == "t2"
    assert Spec.from_file(str(path), model="titans") == Spec.from_text(TITANS)
    assert Spec.from_text(path.read_text(), "t2").ir.bias == ir.Dot()
    with pytest.raises(miras.MirasError) as err:
        Spec.from_file(path, model="nope")
    assert err.value.codes == ["E101"]


def test_user_definitions_are_printed_with_the_spec() -> None:
    defs = definitions("""
        act sq_relu = relu(x)^2
        bias cauchy(c = 1.0) = sum(log(1 + ((y - v) / c)^2))
        retention bounded(lam) {
            regularizer = lam * w^2 / 2
            potential = ((1 + w) * log(1 + w) + (1 - w) * log(1 - w)) / 2
        }
        feature sq(a = 1) = a * x^2
    """)
    spec = model("u", memory=mlp(act=defs.sq_relu), bias=defs.cauchy,
                 retention=defs.bounded(lam=0.01), algorithm=gd, feature=defs.sq(2))
    text = spec.to_miras()
    assert text.index("act sq_relu") < text.index("bias cauchy") < text.index("model u")
    assert Spec.from_text(text) == spec
    same = miras.load(text.replace("model u", "model v").replace("mlp(act=sq_relu)",
                                                                "mlp(act = sq_relu)"))
    assert same.model_copy(update={"name": "u"}) == spec.ir
    with pytest.raises(miras.MirasError) as err:
        defs.bounded()  # lam has no default
    assert err.value.codes == ["E105"]
    with pytest.raises(miras.MirasError) as err:
        defs.cauchy(c=gate())  # user parameters have no gate role
    assert err.value.codes == ["E109"]
    cauchy_file = Spec.from_text("""
        bias cauchy(c=1.0) = sum(log(1 + ((y - v) / c)^2))
        model cauchy_memory { memory = mlp bias = cauchy(c=learned(init=1))
                              retention = none algorithm = gd }""")
    assert cauchy_file.ir.bias == defs.cauchy(c=learned(init=1))


# ---- space ------------------------------------------------------------------------------------

BASE = model("m", memory=matrix, bias=l2, retention=decay(alpha=0.9), algorithm=gd)


def test_space_counts_and_skips_invalid_combinations() -> None:
    memories, algorithms = [matrix, vector, mlp()], [gd, muon, implicit_gd]
    specs = space(BASE, memory=memories, algorithm=algorithms)
    # vector + muon (E133) and mlp + implicit_gd (E131) are rejected
    assert len(specs) == 7
    assert all(isinstance(s, Spec) for s in specs)
    everything = space(BASE, memory=memories, algorithm=algorithms, errors="collect")
    assert len(everything) == 9
    rejected = [v for v in everything if isinstance(v, Rejected)]
    assert [(r.name, r.codes) for r in rejected] == [
        ("m_memory_vector_algorithm_muon", ["E133"]),
        ("m_memory_mlp_algorithm_implicit_gd", ["E131"])]
    assert [v for v in everything if isinstance(v, Spec)] == specs
    assert "model m_memory_vector_algorithm_muon" in rejected[0].text
    with pytest.raises(miras.MirasError) as err:
        space(BASE, memory=memories, algorithm=algorithms, errors="raise")
    assert err.value.codes == ["E133"]


def test_space_names_are_deterministic_and_unique() -> None:
    specs = space(BASE, bias=[l2(), lp(3), lp(4), huber()], retention=[decay(alpha=gate()), kl()])
    assert [s.name for s in specs] == [
        "m_bias_l2_retention_decay", "m_bias_lp_retention_decay",
        "m_bias_lp_p_4_retention_decay", "m_bias_huber_retention_decay"]
    again = space(BASE, bias=[l2(), lp(3), lp(4), huber()], retention=[decay(alpha=gate()), kl()])
    assert again == specs
    same = space(BASE, bias=[l2, l2])
    assert [s.name for s in same] == ["m_bias_l2_0", "m_bias_l2_1"]
    scalars = space(BASE, heads=[4, None], read="before_write", name="x")
    assert [s.name for s in scalars] == ["x_heads_4_read_before_write",
                                         "x_heads_none_read_before_write"]
    long = space(memory=mlp(), bias=S.huber_coord, retention=[S.soft_threshold, decay],
                 algorithm=momentum, hybrid=mac, name="a_rather_long_model_name")
    assert len(long) == 2 and len({s.name for s in long}) == 2
    assert all(len(s.name) <= 64 for s in long)


def test_space_variants_round_trip() -> None:
    positive = BASE.replace(memory=mlp(init="uniform"))
    specs = space(positive, bias=list(S.bias.values()), retention=list(retention.values()))
    assert 40 < len(specs) <= len(S.bias) * len(retention)
    for s in specs:
        assert miras.load(s.to_miras()) == s.ir
        assert Spec.from_text(str(s)) == s


def test_space_usage_errors() -> None:
    with pytest.raises(miras.MirasError) as err:
        space(memory=[matrix], bias=[l2])  # no base: retention and algorithm are missing
    assert err.value.codes == ["E105"]
    with pytest.raises(miras.MirasError) as err:
        space(BASE, retention=[decay(), l2()], errors="skip")  # a bias is no retention
    assert err.value.codes == ["E103"]
    with pytest.raises(miras.MirasError) as err:
        space(BASE, biass=[l2])
    assert err.value.codes == ["E101"]
    with pytest.raises(ValueError, match="errors must be"):
        space(BASE, errors="ignore")  # type: ignore[call-overload]
    assert space(BASE) == [BASE]


# ---- errors carry the front end's codes -------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "codes"),
    [
        (lambda: mlp(dpth=2), ["E102"]),
        (lambda: mlp(depth=2.0), ["E103"]),
        (lambda: mlp(depth=True), ["E103"]),
        (lambda: decay(at="later"), ["E101"]),
        (lambda: mlp(act="swish"), ["E101"]),
        (lambda: lp(p=0), ["E104"]),
        (lambda: sketch(degree=3), ["E104"]),
        (lambda: decay(alpha=gate(init=2)), ["E104"]),
        (lambda: lp(3, p=3), ["E107"]),
        (lambda: huber(1, 2), ["E108"]),
        (lambda: lp(p=gate()), ["E109"]),
        (lambda: chunk(size=gate()), ["E109"]),
        (lambda: S.soft_threshold(threshold=gate()), ["E109"]),
        (lambda: lp(p=learned()), ["E110"]),
        (lambda: gd(lr=float("inf")), ["E111"]),
        (lambda: gate(role="decay"), ["E102"]),
        (lambda: per_head("1 - 2^(-5 - g)"), ["E140"]),
        (lambda: per_head("h) + per_head(1"), ["E103"]),
        (lambda: per_head("(h"), ["E001"]),
        (lambda: model("m", memory=matrix, bias=l2), ["E105"]),
        (lambda: model("m", memory=l2, bias=l2, retention=None, algorithm=gd), ["E103"]),
        (lambda: model("m b", memory=matrix, bias=l2, retention=None, algorithm=gd), ["E103"]),
        (lambda: model("_m", memory=matrix, bias=l2, retention=None, algorithm=gd), ["E112"]),
        (lambda: model("m", memory=matrix, bias=l2, retention=None, algorithm=gd, x=1), ["E101"]),
        (lambda: model("m", memory=matrix, bias=l2, retention=None, algorithm=gd, heads=0),
         ["E104"]),
        (lambda: model("m", memory=matrix, bias=l2, retention=kl(), algorithm=gd), ["E130"]),
        (lambda: model("m", memory=mlp, bias=l2, retention=None, algorithm=gd,
                       parallel=exact), ["E131"]),
        (lambda: model("m", memory=matrix, bias=l2, retention=decay(), algorithm=gd,
                       window=sliding(4)).replace(memory=memory.nonparametric,
                                                  algorithm=algorithm.nonparametric), ["E132"]),
        (lambda: model("m", memory=vector, bias=l2, retention=None, algorithm=muon), ["E133"]),
        (lambda: model("m", memory=memory.nonparametric, bias=l2, retention=None,
                       algorithm=gd), ["E134"]),
        (lambda: Spec(ir.Model(name="m", memory=ir.Matrix(), bias=ir.L2(), retention=ir.KL(),
                               algorithm=ir.GD())), ["E130"]),
    ],
)
def test_errors_have_codes(make: Any, codes: list[str]) -> None:
    with pytest.raises(miras.MirasError) as err:
        make()
    assert err.value.codes == codes
    assert all(f"[{c}]" in str(err.value) for c in codes)


def test_errors_are_all_reported_at_once() -> None:
    with pytest.raises(miras.MirasError) as err:
        mlp(depth=0, act="nope", colour=1)
    assert sorted(err.value.codes) == ["E101", "E102", "E104"]


def test_combination_errors_point_at_the_generated_text() -> None:
    with pytest.raises(miras.MirasError) as err:
        model("m", memory=matrix, bias=l2, retention=kl(), algorithm=gd)
    rendered = err.value.render()
    assert "<spec m>:4:17: error: retention 'kl' takes the log" in rendered
    assert "    retention = kl\n" in rendered


def test_warnings_are_kept() -> None:
    spec = BASE.replace(window=sliding(size=1))
    assert [w.code for w in spec.warnings] == ["W202"]


def test_package_exports() -> None:
    assert miras.Spec is Spec and miras.space is space
    assert miras.spec.model is model


def test_spec_ir_is_what_the_text_reads_back_as() -> None:
    # The IR has one form for a negative literal, Neg(Num(x)), as the parser reads "-x";
    # a hand-made Num(-x) is rejected, and the spec's IR is what its text reads back as.
    with pytest.raises(ValueError, match="non-negative"):
        ir.Num(value=-0.5)
    power = ir.BinOp(op="^", left=ir.Neg(arg=ir.Num(value=0.5)), right=ir.Var(name="h"))
    expr = ir.BinOp(op="+", left=ir.Num(value=0.5),
                    right=ir.BinOp(op="/", left=power, right=ir.Num(value=4)))
    spec = BASE.replace(retention=decay(alpha=ir.PerHead(expr=expr)))
    assert "per_head(0.5 + (-0.5)^h / 4)" in spec.to_miras()
    assert spec.ir == miras.load(spec.to_miras())
