"""Stage 2, AST → IR: the IR of valid specs, and every validation rule with its diagnostic."""

from __future__ import annotations

import math
from pathlib import Path

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import miras
from miras import ir
from miras.diagnostics import Diagnostic, MirasError
from miras.validate import poly_degree


def spec(memory: str = "matrix", bias: str = "l2", retention: str = "none",
         algorithm: str = "gd", extra: str = "", name: str = "m") -> str:
    return (f"model {name} {{ memory = {memory}  bias = {bias}  retention = {retention}  "
            f"algorithm = {algorithm}  {extra} }}")


def load(src: str) -> ir.Model:
    return miras.load(src)


def diags(src: str) -> list[Diagnostic]:
    with pytest.raises(MirasError) as exc:
        miras.check(src)
    return exc.value.diagnostics


def codes(src: str) -> list[str]:
    return [d.code for d in diags(src)]


def only(src: str) -> Diagnostic:
    """The one error of ``src`` (warnings aside)."""
    errors = [d for d in diags(src) if d.severity == "error"]
    assert len(errors) == 1, [d.message for d in errors]
    return errors[0]


C1 = ir.Const(value=1.0)


# --------------------------------------------------------------------------------------------
# The IR of valid specs
# --------------------------------------------------------------------------------------------


def test_minimal_model_ir_and_defaults() -> None:
    checked = miras.run_frontend(spec())
    assert checked.warnings == []
    assert checked.program == ir.Program(models=(ir.Model(
        name="m", memory=ir.Matrix(), bias=ir.L2(), retention=ir.NoRetention(),
        algorithm=ir.GD(lr=C1, steps=1)),))
    m = checked.program.model()
    assert (m.feature, m.window, m.parallel, m.hybrid) == (
        ir.Identity(), ir.NoWindow(), ir.Chunk(size=64), ir.NoHybrid())
    assert (m.heads, m.head_dim, m.read) == (None, None, "after_write")


def test_full_model_ir() -> None:
    m = load(spec("mlp(depth=3, expansion=2, act=silu, residual=false, norm=rmsnorm)",
                  "huber(delta=0.5)", "decay(alpha=0.95, at=decayed)",
                  "momentum(lr=0.1, beta=0.8)",
                  "feature = poly(degree=3, learnable=false)  window = sliding(size=16)  "
                  "parallel = chunk(size=128)  heads = 8  head_dim = 64  read = before_write  "
                  "hybrid = mag(window=256, persistent=4)"))
    assert m == ir.Model(
        name="m",
        memory=ir.MLP(depth=3, expansion=2.0, act="silu", residual=False, norm="rmsnorm"),
        bias=ir.Huber(delta=ir.Const(value=0.5)),
        retention=ir.Decay(alpha=ir.Const(value=0.95), at="decayed"),
        algorithm=ir.Momentum(lr=ir.Const(value=0.1), beta=ir.Const(value=0.8)),
        feature=ir.Poly(degree=3, learnable=False),
        window=ir.Sliding(size=16, gamma=C1),
        parallel=ir.Chunk(size=128),
        heads=8, head_dim=64, read="before_write",
        hybrid=ir.MAG(window=256, persistent=4),
    )
    assert isinstance(m.memory, ir.MLP) and type(m.memory.expansion) is float


def test_constant_arithmetic_is_folded() -> None:
    m = load(spec(retention="decay(alpha=1 - 2^-5)", extra="heads = 2*4  head_dim = 256/4"))
    assert m.retention == ir.Decay(alpha=ir.Const(value=1 - 2**-5))
    assert (m.heads, m.head_dim) == (8, 64)


def test_positional_and_keyword_arguments_agree() -> None:
    kw = load(spec(bias="lp(p=4, smooth=tanh)", retention="decay(alpha=0.9, at=decayed)"))
    pos = load(spec(bias="lp(4, tanh)", retention="decay(0.9, decayed)"))
    mixed = load(spec(bias="lp(4, smooth=tanh)", retention="decay(0.9, at=decayed)"))
    assert kw == pos == mixed
    assert kw.bias == ir.Lp(p=4.0, smooth="tanh")


def test_name_and_empty_call_agree() -> None:
    assert load(spec("matrix", "huber", "decay", "gd")) == \
        load(spec("matrix()", "huber()", "decay()", "gd()"))


def test_layout_and_comments_do_not_change_the_ir() -> None:
    compact = ("bias mine(c=2) = c*sum((y-v)^2)\nmodel m { memory = mlp(depth=2) bias = mine "
               "retention = decay(alpha=0.9) algorithm = gd(lr=gate(channel=true)) }")
    spread = """
        # A comment at the top.
        bias mine(
            c = 2,   # trailing comma and comment
        ) = c * sum( ( y - v ) ^ 2 )

        model m {
            memory    = mlp(depth = 2)      # deep memory
            bias      = mine
            retention = decay(alpha = 0.9)
            algorithm = gd(
                lr = gate(channel = true),
            )
        }
    """
    assert miras.check(compact) == miras.check(spread)
    assert miras.check(compact) != miras.check(compact.replace("0.9", "0.8"))


def test_several_models_and_main(tmp_path: Path) -> None:
    program = miras.check(spec(name="a") + "\n" + spec(name="b", memory="vector"))
    assert [m.name for m in program.models] == ["a", "b"]
    assert program.main == "b"
    assert program.model().memory == ir.Vector()
    assert program.model("a").memory == ir.Matrix()
    assert miras.load(spec(name="a") + "\n" + spec(name="b"), "a").name == "a"
    with pytest.raises(MirasError) as exc:
        miras.load(spec(name="a"), "zz")
    assert exc.value.codes == ["E101"]
    assert "no model named 'zz' (models: a)" in str(exc.value)


def test_empty_program() -> None:
    program = miras.check("")
    assert program == ir.Program()
    assert (program.models, program.definitions, program.main) == ((), (), None)


def test_origins_point_at_the_source() -> None:
    checked = miras.run_frontend("model m {\n  memory = matrix\n  bias = huber(delta=2)\n"
                                 "  retention = none\n  algorithm = gd\n}")
    o = checked.origins
    assert (o[("m",)].line, o[("m",)].col) == (1, 7)
    assert (o[("m", "bias")].line, o[("m", "bias")].col) == (3, 10)
    assert (o[("m", "bias", "delta")].line, o[("m", "bias", "delta")].col) == (3, 16)


# ---- extends --------------------------------------------------------------------------------


def test_extends_inherits_and_overrides() -> None:
    src = (spec("matrix", "l2", "decay(alpha=0.9)", "gd(lr=0.5)", "heads = 4", name="base")
           + "\nmodel child extends base { bias = huber  heads = 8 }"
           + "\nmodel grandchild extends child { retention = none }")
    program = miras.check(src)
    base, child, grandchild = program.models
    assert child.name == "child"
    assert child.bias == ir.Huber()
    assert child.heads == 8
    assert (child.memory, child.retention, child.algorithm) == (
        base.memory, base.retention, base.algorithm)
    assert grandchild.retention == ir.NoRetention()
    assert (grandchild.bias, grandchild.heads) == (ir.Huber(), 8)
    assert grandchild.algorithm == ir.GD(lr=ir.Const(value=0.5))


def test_extends_replaces_whole_choices() -> None:
    """Overriding a field replaces the parent's value, arguments included."""
    src = (spec(retention="decay(alpha=0.5, at=decayed)", name="base")
           + "\nmodel child extends base { retention = decay(alpha=0.9) }")
    assert miras.load(src).retention == ir.Decay(alpha=ir.Const(value=0.9), at="prev")


def test_extends_a_later_model_and_an_incomplete_parent() -> None:
    src = ("model child extends base { memory = matrix  algorithm = gd }\n"
           "model base { bias = l2  retention = none  memory = vector  algorithm = gd }")
    child = miras.load(src, "child")
    assert child.memory == ir.Matrix()
    assert child.bias == ir.L2()


def test_a_parent_model_must_be_complete_too() -> None:
    src = "model base { bias = l2 }\nmodel child extends base { memory = matrix  " \
          "retention = none  algorithm = gd }"
    d = only(src)
    assert (d.code, d.span.line) == ("E105", 1)  # type: ignore[union-attr]
    assert d.message.startswith("model 'base' does not set memory, retention, algorithm")


# ---- include --------------------------------------------------------------------------------


def test_include_definitions_and_models(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "defs.miras").write_text(
        "bias mine = sum(abs(y - v))\nmodel shared { memory = matrix  bias = mine  "
        "retention = none  algorithm = gd }\n")
    main = tmp_path / "main.miras"
    main.write_text('include "lib/defs.miras"\nmodel local extends shared { heads = 2 }\n')
    checked = miras.run_frontend(main)
    program = checked.program
    assert [m.name for m in program.models] == ["shared", "local"]
    assert program.main == "local"
    local = program.model()
    assert isinstance(local.bias, ir.UserBias) and local.bias.definition.name == "mine"
    assert local.heads == 2
    assert [d.name for d in program.definitions] == ["mine"]
    assert {Path(f.path).name for f in checked.files} == {"main.miras", "defs.miras"}


def test_include_relative_to_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "inner.miras").write_text("act sq = x*x\n")
    (tmp_path / "a" / "outer.miras").write_text('include "b/inner.miras"\n')
    main = tmp_path / "main.miras"
    main.write_text('include "a/outer.miras"\n' + spec(memory="mlp(act=sq)"))
    m = miras.load(main)
    assert isinstance(m.memory, ir.MLP)
    assert m.memory.act == ir.ActDef(name="sq", formula=ir.BinOp(
        op="*", left=ir.Var(name="x"), right=ir.Var(name="x")))


def test_include_once(tmp_path: Path) -> None:
    """A file included twice (directly and through another file) is read once."""
    (tmp_path / "common.miras").write_text("feature sq = x^2\n")
    (tmp_path / "mid.miras").write_text('include "common.miras"\n')
    main = tmp_path / "main.miras"
    main.write_text('include "common.miras"\ninclude "mid.miras"\ninclude "./common.miras"\n'
                    + spec(extra="feature = sq"))
    program = miras.check(main)
    assert [d.name for d in program.definitions] == ["sq"]


def test_include_from_text_resolves_against_cwd(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lib.miras").write_text(spec(name="libmodel"))
    monkeypatch.chdir(tmp_path)
    program = miras.check('include "lib.miras"\n')
    assert program.main == "libmodel"


def test_include_model_name_clash_reported(tmp_path: Path) -> None:
    (tmp_path / "lib.miras").write_text(spec())
    main = tmp_path / "main.miras"
    main.write_text('include "lib.miras"\n' + spec())
    d = only(str(main))
    assert d.code == "E120" and d.span is not None and d.span.file == str(main)
    assert d.notes[0][1] is not None and Path(d.notes[0][1].file).name == "lib.miras"


# ---- values: learned, per_head, gate ---------------------------------------------------------


GATE = "gate(channel={channel}, act=sigmoid, init=0.5)"
#: parameters compared with a norm take one value per head
PER_HEAD_ONLY = {"huber", "robust_shift"}


@pytest.mark.parametrize(("axis", "call", "param", "role"), [
    ("algorithm", "gd(lr={})", "lr", "lr"),
    ("algorithm", "momentum(lr={})", "lr", "lr"),
    ("algorithm", "momentum(beta={})", "beta", "momentum"),
    ("algorithm", "muon(beta={})", "beta", "momentum"),
    ("algorithm", "implicit_gd(lr={})", "lr", "lr"),
    ("retention", "decay(alpha={})", "alpha", "decay"),
    ("retention", "lq(alpha={})", "alpha", "decay"),
    ("retention", "elastic_net(alpha={})", "alpha", "decay"),
    ("bias", "huber(delta={})", "delta", "delta"),
    ("bias", "huber_coord(delta={})", "delta", "delta"),
    ("bias", "robust_shift(radius={})", "radius", "delta"),
    ("window", "sliding(gamma={})", "gamma", "gamma"),
])
def test_gate_role_comes_from_the_parameter(axis: str, call: str, param: str,
                                            role: str) -> None:
    channel = call.split("(")[0] not in PER_HEAD_ONLY
    value = call.replace("{}", GATE.format(channel="true" if channel else "false"))
    src = spec(**{axis: value}) if axis != "window" else spec(extra=f"window = {value}")
    m = load(src)
    gate = getattr(getattr(m, axis), param)
    assert gate == ir.Gate(role=role, channel=channel, act="sigmoid", init=0.5)  # type: ignore[arg-type]


def test_gate_all_arguments_and_defaults() -> None:
    m = load(spec(algorithm="gd(lr=gate(channel=true, rank=8, act=exp, init=0.1, scale=2, "
                            "per=chunk))"))
    assert m.algorithm == ir.GD(lr=ir.Gate(role="lr", channel=True, rank=8, act="exp",
                                           init=0.1, scale=2.0, per="chunk"))
    plain = load(spec(algorithm="gd(lr=gate())")).algorithm
    assert isinstance(plain, ir.GD)
    assert plain.lr == ir.Gate(role="lr", channel=False, rank=32, act="sigmoid", init=None,
                               scale=1.0, per="token")


def test_gate_role_is_not_an_argument() -> None:
    d = only(spec(algorithm="gd(lr=gate(role=decay))"))
    assert d.code == "E102"
    assert d.message.startswith("gate(...) has no parameter 'role'")


def test_learned_values() -> None:
    m = load(spec(retention="decay(alpha=learned(init=0.9, channel=true))",
                  algorithm="momentum(lr=learned(), beta=learned(0.5))"))
    assert m.retention == ir.Decay(alpha=ir.Learned(init=0.9, channel=True))
    assert m.algorithm == ir.Momentum(lr=ir.Learned(init=1.0), beta=ir.Learned(init=0.5))


def test_learned_for_a_parameter_without_role() -> None:
    m = load(spec(retention="soft_threshold(threshold=learned(init=0.01))"))
    assert m.retention == ir.SoftThreshold(threshold=ir.Learned(init=0.01))


def test_per_head_schedule_ir() -> None:
    m = load(spec(retention="decay(alpha=per_head(1 - 2^(-5 - h)))"))
    assert m.retention == ir.Decay(alpha=ir.PerHead(expr=ir.BinOp(
        op="-", left=ir.Num(value=1.0),
        right=ir.BinOp(op="^", left=ir.Num(value=2.0), right=ir.BinOp(
            op="-", left=ir.Neg(arg=ir.Num(value=5.0)), right=ir.Var(name="h"))))))


@pytest.mark.parametrize(("value", "code", "fragment"), [
    ("per_head(x)", "E140", "unknown variable 'x'"),
    ("per_head(h, h)", "E141", "per_head takes one formula of the head index h"),
    ("per_head(e=h)", "E141", "per_head takes one formula"),
    ("per_head(h > 1)", "E143", "a comparison can only be the condition"),
    ("learned(init=2)", "E104", "'alpha' = 2 is out of range (≥ 0, ≤ 1)"),
    ("gate(init=-0.5)", "E104", "'alpha' = -0.5 is out of range"),
    ("gate(rank=0, channel=true)", "E104", "'rank' = 0 is out of range (≥ 1, ≤ 4096)"),
    ("gate(scale=0)", "E104", "'scale' = 0 is out of range (> 0)"),
    ("gate(act=relu)", "E101", "unknown value 'relu' for 'act'"),
    ("gate(per=block)", "E101", "unknown value 'block' for 'per'"),
    ("gate(channel=1)", "E103", "'channel' must be true or false"),
    ("learned(foo=1)", "E102", "learned(...) has no parameter 'foo'"),
    ("learned(1, true, 3)", "E108", "learned(...) takes at most 2 positional arguments"),
])
def test_bad_scalar_values(value: str, code: str, fragment: str) -> None:
    d = only(spec(retention=f"decay(alpha={value})"))
    assert d.code == code
    assert fragment in d.message, d.message


def test_rank_on_a_per_head_gate_is_dead() -> None:
    checked = miras.run_frontend(spec(algorithm="gd(lr=gate(rank=4))"))
    (w,) = checked.warnings
    assert (w.code, w.severity) == ("W202", "warning")
    assert "'rank' has no effect on a gate with channel=false" in w.message
    assert miras.run_frontend(spec(algorithm="gd(lr=gate(rank=4, channel=true))")).warnings == []


# ---- user definitions ----------------------------------------------------------------------


def test_user_bias_ir_and_use() -> None:
    src = ("bias wl2(c=1, d=learned(init=0.5)) = c*sum((y - v)^2) + d*norm(y)\n"
           + spec(bias="wl2(2)"))
    program = miras.check(src)
    (definition,) = program.definitions
    y_minus_v = ir.BinOp(op="-", left=ir.Var(name="y"), right=ir.Var(name="v"))
    assert definition == ir.BiasDef(
        name="wl2",
        params=(ir.ParamDef(name="c", default=C1),
                ir.ParamDef(name="d", default=ir.Learned(init=0.5))),
        formula=ir.BinOp(op="+", left=ir.BinOp(
            op="*", left=ir.Var(name="c"), right=ir.Fn(name="sum", args=(
                ir.BinOp(op="^", left=y_minus_v, right=ir.Num(value=2.0)),))),
            right=ir.BinOp(op="*", left=ir.Var(name="d"),
                           right=ir.Fn(name="norm", args=(ir.Var(name="y"),)))))
    assert program.model().bias == ir.UserBias(definition=definition, args=(
        ir.UserArg(name="c", value=ir.Const(value=2.0)),
        ir.UserArg(name="d", value=ir.Learned(init=0.5))))


def test_user_args_accept_learned_and_per_head() -> None:
    src = "bias b(c) = c*sum((y - v)^2)\n" + spec(bias="b(c=per_head(h + 1))")
    bias = miras.load(src).bias
    assert isinstance(bias, ir.UserBias)
    assert bias.args == (ir.UserArg(name="c", value=ir.PerHead(expr=ir.BinOp(
        op="+", left=ir.Var(name="h"), right=ir.Num(value=1.0)))),)


def test_user_retention_shorthand_and_block() -> None:
    src = ("retention ridge(c=0.5) = c*w^2\n"
           "retention mirror { regularizer = abs(w)  potential = w*log(w) }\n"
           "retention pot_only { potential = cosh(w) }\n"
           + spec(retention="ridge(c=0.1)", name="a") + "\n"
           + spec(retention="mirror", name="b") + "\n"
           + spec(retention="pot_only", name="c"))
    program = miras.check(src)
    ridge, mirror, pot = program.definitions
    w = ir.Var(name="w")
    assert ridge == ir.RetentionDef(
        name="ridge", params=(ir.ParamDef(name="c", default=ir.Const(value=0.5)),),
        regularizer=ir.BinOp(op="*", left=ir.Var(name="c"),
                             right=ir.BinOp(op="^", left=w, right=ir.Num(value=2.0))))
    assert ridge.potential is None
    assert mirror == ir.RetentionDef(
        name="mirror", regularizer=ir.Fn(name="abs", args=(w,)),
        potential=ir.BinOp(op="*", left=w, right=ir.Fn(name="log", args=(w,))))
    assert pot.regularizer is None and pot.potential == ir.Fn(name="cosh", args=(w,))
    a, b, _ = program.models
    assert a.retention == ir.UserRetention(
        definition=ridge, args=(ir.UserArg(name="c", value=ir.Const(value=0.1)),))
    assert b.retention == ir.UserRetention(definition=mirror)


def test_user_feature_and_act() -> None:
    src = ("feature elu1(a=1) = where(x > 0, x + 1, a*exp(x))\n"
           "act swish = x*sigmoid(x)\n"
           + spec(memory="gated_mlp(act=swish)", extra="feature = elu1"))
    program = miras.check(src)
    feature, act = program.definitions
    assert feature == ir.FeatureDef(
        name="elu1", params=(ir.ParamDef(name="a", default=C1),),
        formula=ir.Fn(name="where", args=(
            ir.Cmp(op=">", left=ir.Var(name="x"), right=ir.Num(value=0.0)),
            ir.BinOp(op="+", left=ir.Var(name="x"), right=ir.Num(value=1.0)),
            ir.BinOp(op="*", left=ir.Var(name="a"), right=ir.Fn(
                name="exp", args=(ir.Var(name="x"),))))))
    assert act == ir.ActDef(name="swish", formula=ir.BinOp(
        op="*", left=ir.Var(name="x"), right=ir.Fn(name="sigmoid", args=(ir.Var(name="x"),))))
    m = program.model()
    assert m.feature == ir.UserFeature(definition=feature, args=(
        ir.UserArg(name="a", value=C1),))
    assert m.memory == ir.GatedMLP(act=act)


def test_feature_may_use_reductions_and_pi() -> None:
    program = miras.check("feature unit = x / norm(x) * pi")
    (f,) = program.definitions
    assert isinstance(f, ir.FeatureDef) and f.formula == ir.BinOp(
        op="*", left=ir.BinOp(op="/", left=ir.Var(name="x"),
                              right=ir.Fn(name="norm", args=(ir.Var(name="x"),))),
        right=ir.Var(name="pi"))


def test_definitions_may_follow_their_use() -> None:
    src = spec(bias="late") + "\nbias late = dot(y, v)"
    assert isinstance(miras.load(src).bias, ir.UserBias)


def test_unused_parameter_warns_but_loads() -> None:
    checked = miras.run_frontend("feature f(a=1, b=2) = a*x\n" + spec(extra="feature = f"))
    assert [(w.code, w.span.col) for w in checked.warnings] == [("W201", 16)]  # type: ignore[union-attr]
    assert isinstance(checked.program.model().feature, ir.UserFeature)


# ---- the IR itself --------------------------------------------------------------------------


def test_ir_is_frozen() -> None:
    m = load(spec())
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        m.heads = 4  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        m.memory.init = "uniform"  # type: ignore[misc,union-attr]
    assert hash(m) == hash(load(spec()))


@pytest.mark.parametrize(("cls", "kwargs"), [
    (ir.Matrix, {"rank": 3}),
    (ir.Gate, {"role": "lr", "bias": 1}),
    (ir.Model, {"name": "m", "memory": ir.Matrix(), "bias": ir.L2(),
                "retention": ir.NoRetention(), "algorithm": ir.GD(), "layers": 2}),
    (ir.Num, {"value": 1.0, "text": "1"}),
])
def test_ir_rejects_extra_fields(cls: type[pydantic.BaseModel], kwargs: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        cls(**kwargs)


def test_ir_rejects_wrong_values() -> None:
    with pytest.raises(pydantic.ValidationError):
        ir.Matrix(init="ones")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError, match="finite"):
        ir.Num(value=math.inf)
    with pytest.raises(pydantic.ValidationError):
        ir.Gate(role="speed")  # type: ignore[arg-type]


def test_ir_round_trips_through_json() -> None:
    program = miras.check("bias b(c=1) = c*sum(abs(y - v))\n"
                          + spec(bias="b", retention="decay(alpha=gate())"))
    assert ir.Program.model_validate_json(program.model_dump_json()) == program


# --------------------------------------------------------------------------------------------
# Validation rules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "code", "message"), [
    (spec(memory="tensor"), "E101", "unknown memory 'tensor'"),
    (spec(bias="l3"), "E101", "unknown bias 'l3'"),
    (spec(retention="forget"), "E101", "unknown retention 'forget'"),
    (spec(algorithm="adam"), "E101", "unknown algorithm 'adam'"),
    (spec(extra="feature = rff"), "E101", "unknown feature 'rff'"),
    (spec(extra="parallel = scan"), "E101", "unknown parallel 'scan'"),
    (spec(extra="hybrid = mamba"), "E101", "unknown hybrid 'mamba'"),
    (spec(extra="layers = 4"), "E101", "unknown field 'layers' in model 'm'"),
    (spec(memory="matrix(init=ones)"), "E101", "unknown value 'ones' for 'init'"),
    (spec(memory="mlp(act=swish)"), "E101", "unknown act 'swish'"),
    (spec(memory="mlp(depth=2, width=3)"), "E102", "memory 'mlp' has no parameter 'width'"),
    (spec(bias="l2(p=2)"), "E102", "bias 'l2' has no parameter 'p' (parameters: no parameters)"),
    (spec(retention="none(0.5)"), "E108", "retention 'none' takes at most 0 positional"),
    (spec(algorithm="gd(lr=0.1, lr=0.2)"), "E107", "argument 'lr' of algorithm 'gd' is given"),
    (spec(algorithm="gd(0.1, lr=0.2)"), "E107", "argument 'lr' of algorithm 'gd' is given"),
])
def test_unknown_names_and_arguments(src: str, code: str, message: str) -> None:
    d = only(src)
    assert d.code == code
    assert d.message.startswith(message), d.message


@pytest.mark.parametrize(("src", "message"), [
    (spec(memory="3"), "expected a memory choice such as 'vector'"),
    (spec(memory='"matrix"'), "expected a memory choice"),
    (spec(bias="1 + l2"), "expected a bias choice"),
    (spec(extra="heads = 2.5"), "'heads' must be an integer, not 2.5"),
    (spec(extra="heads = 2.0"), "'heads' must be an integer, not 2.0"),
    (spec(extra="heads = 7/2"), "'heads' must be an integer, not 3.5"),
    (spec(extra="heads = many"), "'heads' must be a number, not the name 'many'"),
    (spec(extra='heads = "8"'), "'heads' must be a number"),
    (spec(extra="heads = f(8)"), "'heads' must be a number"),
    (spec(extra="read = 1"), "'read' must be one of: after_write, before_write"),
    (spec(memory="mlp(residual=yes)"), "'residual' must be true or false"),
    (spec(memory="mlp(residual=1)"), "'residual' must be true or false"),
    (spec(memory="mlp(act=1)"), "'act' must name an activation"),
    (spec(memory="mlp(expansion=wide)"), "'expansion' must be a number, not the name 'wide'"),
    (spec(algorithm="gd(lr=fast)"), "'lr' must be a number, not the name 'fast'"),
    (spec(algorithm="gd(lr=matrix(1))"), "'lr' must be a number"),
])
def test_wrong_types(src: str, message: str) -> None:
    d = only(src)
    assert d.code == "E103"
    assert d.message == message or d.message.startswith(message), d.message


# ---- ranges ---------------------------------------------------------------------------------

RANGES = [
    # (template, lowest accepted, just outside, rule text)
    (spec(bias="lp(p={})"), "1", "0.999", "≥ 1, ≤ 16"),
    (spec(retention="lq(q={})"), "1.001", "1", "> 1, ≤ 16"),
    (spec(extra="window = sliding(size={})"), "2", "0", "≥ 1, ≤ 1000000"),
    (spec(extra="parallel = chunk(size={})"), "1", "0", "≥ 1, ≤ 65536"),
    (spec(extra="parallel = exact(size={})"), "1", "-64", "≥ 1, ≤ 65536"),
    (spec(memory="mlp(depth={})"), "1", "0", "≥ 1, ≤ 16"),
    (spec(memory="mlp(expansion={})"), "0.01", "0", "> 0, ≤ 64"),
    (spec(memory="gated_mlp(expansion={})"), "0.5", "-1", "> 0, ≤ 64"),
    (spec(extra="heads = {}"), "1", "0", "≥ 1, ≤ 4096"),
    (spec(extra="head_dim = {}"), "1", "-8", "≥ 1, ≤ 4096"),
    (spec(retention="decay(alpha={})"), "0", "-0.1", "≥ 0, ≤ 1"),
    (spec(algorithm="gd(lr={})"), "1e-9", "0", "> 0"),
    (spec(algorithm="momentum(beta={})"), "0", "1.5", "≥ 0, ≤ 1"),
    (spec(bias="huber(delta={})"), "0.001", "0", "> 0"),
    (spec(extra="feature = sketch(degree={})"), "2", "0", "≥ 2, ≤ 8"),
    (spec(extra="hybrid = mac(persistent={})"), "0", "-1", "≥ 0, ≤ 4096"),
]


@pytest.mark.parametrize(("template", "ok", "bad", "rule"), RANGES)
def test_parameter_ranges(template: str, ok: str, bad: str, rule: str) -> None:
    miras.check(template.replace("{}", ok))
    src = template.replace("{}", bad)
    d = only(src)
    assert d.code == "E104"
    assert d.message.endswith(f"is out of range ({rule})"), d.message
    assert d.span is not None
    assert (d.span.col, d.span.end_col) == (template.index("{}") + 1,
                                            template.index("{}") + 1 + len(bad))


@pytest.mark.parametrize(("template", "high", "too_high"), [
    (spec(bias="lp(p={})"), "16", "17"),
    (spec(memory="mlp(depth={})"), "16", "17"),
    (spec(extra="heads = {}"), "4096", "4097"),
    (spec(extra="parallel = chunk(size={})"), "65536", "65537"),
    (spec(algorithm="gd(steps={})"), "8", "9"),
])
def test_upper_bounds(template: str, high: str, too_high: str) -> None:
    miras.check(template.replace("{}", high))
    assert codes(template.replace("{}", too_high)) == ["E104"]


def test_sketch_degree_must_be_even() -> None:
    d = only(spec(extra="feature = sketch(degree=3)"))
    assert (d.code, d.message) == ("E104", "'degree' must be even, not 3")


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=-10, max_value=10, allow_nan=False))
def test_decay_alpha_accepted_exactly_in_range(x: float) -> None:
    src = spec(retention=f"decay(alpha={x!r})")  # a negative value is a unary minus
    if 0 <= x <= 1:
        assert load(src).retention == ir.Decay(alpha=ir.Const(value=x))
    else:
        assert codes(src) == ["E104"]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=-10**6, max_value=10**6))
def test_chunk_size_accepted_exactly_in_range(n: int) -> None:
    src = spec(extra=f"parallel = chunk(size={n})")
    if 1 <= n <= 65536:
        assert load(src).parallel == ir.Chunk(size=n)
    else:
        assert codes(src) == ["E104"]


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=0.5, max_value=5000, allow_nan=False).filter(
    lambda v: not v.is_integer()))
def test_non_integer_heads_rejected(x: float) -> None:
    d = only(spec(extra=f"heads = {x!r}"))
    assert (d.code, d.message) == ("E103", f"'heads' must be an integer, not {x!r}")


# ---- constants only --------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "label"), [
    (spec(bias="lp(p=gate())"), "p"),
    (spec(retention="lq(q=gate())"), "q"),
    (spec(extra="parallel = chunk(size=gate())"), "size"),
    (spec(extra="window = sliding(size=gate())"), "size"),
    (spec(memory="mlp(depth=gate())"), "depth"),
    (spec(extra="heads = gate()"), "heads"),
    (spec(algorithm="gd(steps=gate())"), "steps"),
])
def test_gate_where_a_constant_is_needed(src: str, label: str) -> None:
    d = only(src)
    assert d.code == "E109"
    assert d.message == f"'{label}' cannot be a gate: it must be constant over tokens"
    assert d.span is not None and src[d.span.col - 1:d.span.end_col - 1] == "gate"


@pytest.mark.parametrize("src", [
    spec(retention="soft_threshold(threshold=gate())"),
    spec(retention="elastic_net(threshold=gate())"),
    "bias b(c=gate()) = c*sum((y - v)^2)",
    "bias b(c) = c*sum((y - v)^2)\n" + spec(bias="b(c=gate())"),
])
def test_gate_only_where_a_role_exists(src: str) -> None:
    d = only(src)
    assert d.code == "E109"
    assert "only parameters with a gate role (lr, decay, momentum, delta, gamma)" in d.message


@pytest.mark.parametrize(("src", "fn"), [
    (spec(bias="lp(p=learned())"), "learned"),
    (spec(bias="lp(p=per_head(h + 1))"), "per_head"),
    (spec(retention="lq(q=learned(init=2))"), "learned"),
    (spec(extra="parallel = chunk(size=learned())"), "learned"),
    (spec(extra="heads = per_head(h)"), "per_head"),
])
def test_learned_or_per_head_where_a_literal_is_needed(src: str, fn: str) -> None:
    d = only(src)
    assert d.code == "E110"
    assert d.message.endswith(f"must be a literal number, not {fn}(...)")


# ---- incompatible combinations -----------------------------------------------------------


@pytest.mark.parametrize("retention", [
    "kl", "kl(alpha=0.9)", "fdiv", "fdiv(f=hellinger)", "bregman", "bregman(potential=logit)",
])
@pytest.mark.parametrize("memory", ["matrix", "vector", "mlp", "gated_mlp"])
def test_log_retention_needs_positive_memory(retention: str, memory: str) -> None:
    d = only(spec(memory=memory, retention=retention))
    assert d.code == "E130"
    assert "needs a positive memory" in d.message and "(use init=uniform)" in d.message
    assert d.notes and d.notes[0][0] == "memory declared here"
    assert load(spec(memory=f"{memory}(init=uniform)", retention=retention))


def test_quadratic_bregman_needs_no_positive_memory() -> None:
    m = load(spec(retention="bregman(potential=quadratic)"))
    assert m.retention == ir.Bregman(potential="quadratic")


@pytest.mark.parametrize("ok", [
    spec(extra="parallel = exact"),
    spec(memory="vector", retention="decay(alpha=gate())", extra="parallel = exact(size=32)"),
    spec(bias="dot", algorithm="momentum", extra="parallel = exact"),
    spec(algorithm="implicit_gd", extra="parallel = exact"),
    "bias sq = sum((y - v)^2)/2 + dot(y, k)\n" + spec(bias="sq", extra="parallel = exact"),
])
def test_exact_allowed_for_affine_updates(ok: str) -> None:
    assert isinstance(load(ok).parallel, ir.Exact)


@pytest.mark.parametrize(("src", "why"), [
    (spec(memory="mlp", extra="parallel = exact"), "memory 'mlp' is not linear in its weights"),
    (spec(memory="gated_mlp", extra="parallel = exact"), "memory 'gated_mlp' is not linear"),
    (spec(bias="huber", extra="parallel = exact"), "the gradient of bias 'huber' is not affine"),
    (spec(bias="lp", extra="parallel = exact"), "the gradient of bias 'lp' is not affine in y"),
    ("bias cube = sum(abs(y - v)^3)\n" + spec(bias="cube", extra="parallel = exact"),
     "the gradient of bias 'cube' is not affine in y"),
    (spec(retention="lq", extra="parallel = exact"), "retention 'lq' is not a linear map"),
    (spec(memory="matrix(init=uniform)", retention="kl", extra="parallel = exact"),
     "retention 'kl' is not a linear map"),
    (spec(retention="soft_threshold", extra="parallel = exact"), "retention 'soft_threshold'"),
    (spec(algorithm="muon", extra="parallel = exact"), "algorithm 'muon' is not linear"),
])
def test_exact_needs_an_affine_update(src: str, why: str) -> None:
    d = only(src)
    assert d.code == "E131"
    assert why in d.message
    assert d.message.endswith("; use chunk(size=...) instead")


@pytest.mark.parametrize(("memory", "bias"), [("mlp", "l2"), ("matrix", "huber"),
                                              ("vector", "dot")])
def test_implicit_gd_needs_l2_on_a_linear_memory(memory: str, bias: str) -> None:
    d = only(spec(memory=memory, bias=bias, algorithm="implicit_gd"))
    assert d.code == "E131"
    assert d.message.startswith("implicit GD has a closed form (Longhorn) only for bias = l2")


@pytest.mark.parametrize("retention", ["decay", "decay(alpha=0.9)", "kl", "lq", "soft_threshold"])
def test_nonparametric_memory_takes_no_retention(retention: str) -> None:
    errors = [d for d in diags(spec("nonparametric", retention=retention,
                                    algorithm="nonparametric")) if d.code == "E132"]
    assert len(errors) == 1
    assert "forget old tokens with a window instead" in errors[0].message


def test_nonparametric_memory_with_window_is_fine() -> None:
    checked = miras.run_frontend(spec(
        "nonparametric(kernel=poly, degree=2)", algorithm="nonparametric",
        extra="window = sliding(size=512)"))
    m = checked.program.model()
    assert m.memory == ir.Nonparametric(kernel="poly", degree=2)
    assert m.window == ir.Sliding(size=512)
    assert checked.warnings == []


@pytest.mark.parametrize(("src", "fragment"), [
    (spec("nonparametric"), "(there are no weights to learn)"),
    (spec(algorithm="nonparametric"), "(this memory has weights to learn)"),
    (spec("nonparametric", "dot", algorithm="nonparametric"), "use bias = l2"),
])
def test_nonparametric_memory_and_algorithm_together(src: str, fragment: str) -> None:
    d = only(src)
    assert d.code == "E134"
    assert fragment in d.message


@pytest.mark.parametrize("memory", ["vector", "vector(init=uniform)"])
def test_muon_needs_matrix_weights(memory: str) -> None:
    d = only(spec(memory=memory, algorithm="muon"))
    assert d.code == "E133"


@pytest.mark.parametrize("memory", ["matrix", "mlp", "gated_mlp"])
def test_muon_with_matrix_weights(memory: str) -> None:
    assert load(spec(memory=memory, algorithm="muon(steps=3)")).algorithm == ir.Muon(steps=3)


def test_hybrid_needs_parametric_memory() -> None:
    d = only(spec("nonparametric", algorithm="nonparametric", extra="hybrid = samba"))
    assert d.code == "E135"
    assert load(spec(extra="hybrid = samba(window=64)")).hybrid == ir.Samba(window=64)


def test_dead_fields() -> None:
    checked = miras.run_frontend(spec(extra="window = sliding(size=1)"))
    assert [w.code for w in checked.warnings] == ["W202"]
    checked = miras.run_frontend(spec("nonparametric", algorithm="nonparametric",
                                      extra="parallel = chunk(size=8)"))
    assert [w.code for w in checked.warnings] == ["W202"]


# ---- formulas -------------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "code", "fragment"), [
    ("bias b = sum((y - q)^2)", "E140", "unknown variable 'q' (available: k, pi, v, y)"),
    ("retention r = x^2", "E140", "unknown variable 'x' (available: pi, w)"),
    ("feature f = y", "E140", "unknown variable 'y' (available: pi, x)"),
    ("act a = w", "E140", "unknown variable 'w'"),
    ("bias b = sum(exp2(y))", "E101", "unknown function 'exp2'"),
    ("bias b = sum(eval(y))", "E101", "unknown function 'eval'"),
    ("bias b = sum(abs(y, v))", "E141", "'abs' takes 1 argument, got 2"),
    ("bias b = dot(y)", "E141", "'dot' takes 2 arguments, got 1"),
    ("bias b = norm(y, 2, 3)", "E141", "'norm' takes 1 or 2 arguments, got 3"),
    ("act a = where(x > 0, x)", "E141", "'where' takes 3 arguments, got 2"),
    ("bias b = y - v", "E142", "a bias must be a scalar, but this formula is a vector"),
    ("bias b = norm(y - v, v)", "E142", "the order p of norm(x, p) must be a scalar"),
    ("feature f = norm(x)", "E142", "a feature map must be a vector"),
    ("retention r = w + dot(w, w)", None, None),
    ("act a = x > 0", "E143", "a comparison can only be the condition of where"),
    ("act a = where(x, x, 0)", "E103", "the condition of where(...) must be a comparison"),
    ("act a = where(x > (x > 0), x, 0)", "E143", "a comparison can only be the condition"),
    ("act a = abs(x=x)", "E103", "'abs' takes positional arguments only"),
    ('act a = x + "1"', "E103", "strings are not allowed in formulas"),
    ("act a = x * 1e400", "E111", "number 1e400 is not finite"),
    ("bias b = sum(v^2)", "E144", "bias 'b' does not depend on y"),
    ("bias b(c=1) = c*sum(k)", "E144", "does not depend on y"),
    ("feature f = 2", "E145", "feature 'f' does not depend on x"),
    ("act a = pi", "E145", "act 'a' does not depend on x"),
    ("retention r { potential = 2 }", "E145", "the potential must depend on w"),
    ("retention r { }", "E105", "retention 'r' defines neither a regularizer nor a potential"),
    ("retention r { penalty = w^2 }", "E101", "unknown retention field 'penalty'"),
    ("retention r { regularizer = w^2  regularizer = w }", "E106", "'regularizer' is set twice"),
    ("bias b(c, c) = c*sum(y)", "E107", "parameter 'c' is declared twice"),
    ("bias b(y) = sum(y)", "E120", "parameter 'y' shadows a variable of bias formulas"),
    ("bias b(pi=3) = pi*sum(y)", "E120", "parameter 'pi' shadows a variable"),
    ("bias b(c=x) = c*sum(y)", "E103", "'c' must be a number, not the name 'x'"),
])
def test_formula_rules(src: str, code: str | None, fragment: str | None) -> None:
    if code is None:  # a retention term may be any scalar expression of w
        assert miras.check(src).definitions
        return
    d = only(src)
    assert d.code == code
    assert fragment is not None and fragment in d.message, d.message


def test_retention_term_shape() -> None:
    # w is a scalar (one weight): every retention term is a scalar, no reduction needed
    (r,) = miras.check("retention r { regularizer = abs(w)  potential = w^2/2 }").definitions
    assert isinstance(r, ir.RetentionDef) and r.potential is not None


def test_broken_definition_used_by_a_model_reports_only_the_definition() -> None:
    """A model using a definition with errors is skipped, not built half-way."""
    for definition, use in [
        ("bias b = sum(v)", spec(bias="b")),
        ("bias b(c=gate()) = c*sum(y)", spec(bias="b")),
        ("act a = 1", spec(memory="mlp(act=a)")),
        ("feature f = sum(x)", spec(extra="feature = f")),
        ("retention r { }", spec(retention="r")),
    ]:
        src = definition + "\n" + use + "\nmodel child extends m { heads = 2 }"
        errors = [d for d in diags(src) if d.severity == "error"]
        assert len(errors) == 1 and errors[0].span is not None, (definition, errors)
        assert errors[0].span.line == 1


@pytest.mark.parametrize(("text", "degree"), [
    ("sum((y - v)^2)", 2), ("dot(y, k)", 1), ("sum(v)", 0), ("sum(y*y*y)", 3),
    ("sum(abs(y))", math.inf), ("sum(y^c)", math.inf), ("sum(y/2)", 1), ("sum(2/y)", math.inf),
    ("norm(y)", math.inf), ("-sum(y)^2", 2), ("sum(y^2.5)", math.inf), ("sum(exp(v))", 0),
])
def test_poly_degree(text: str, degree: float) -> None:
    (b,) = miras.check(f"bias b(c=2) = {text} + 0*c*sum(y)").definitions
    assert isinstance(b, ir.BiasDef)
    assert poly_degree(b.formula.left, "y") == degree  # type: ignore[union-attr]


# ---- names and definitions -------------------------------------------------------------------


@pytest.mark.parametrize(("src", "what"), [
    (spec(name="class"), "'class' cannot name a model: it is a reserved word"),
    (spec(name="match"), "'match' cannot name a model: it is a reserved word"),
    (spec(name="_private"), "'_private' cannot name a model: names starting with '_'"),
    (spec(name="__init__"), "'__init__' cannot name a model"),
    (spec(name="m" * 65), "cannot name a model: names are at most 64 characters"),
    ("bias lambda = sum(y)", "'lambda' cannot name a bias definition"),
    ("act __call__ = x", "'__call__' cannot name an act definition"),
    ("feature f(import=1) = x", "'import' cannot name a parameter"),
])
def test_reserved_names(src: str, what: str) -> None:
    d = next(x for x in diags(src) if x.code == "E112")
    assert what in d.message, d.message


def test_long_name_is_shortened_in_the_message() -> None:
    d = only(spec(name="a" * 500))
    assert d.code == "E112" and d.message.startswith(f"'{'a' * 64}...' cannot name a model")


def test_name_of_64_characters_is_fine() -> None:
    assert miras.load(spec(name="m" * 64)).name == "m" * 64


@pytest.mark.parametrize(("src", "message"), [
    (spec() + "\n" + spec(), "model 'm' is defined twice"),
    ("bias b = sum(y)\nbias b = dot(y, v)", "bias 'b' is defined twice"),
    ("bias l2 = sum(y)", "bias 'l2' redefines a built-in bias; choose another name"),
    ("retention decay = w^2", "retention 'decay' redefines a built-in retention"),
    ("feature poly = x^2", "feature 'poly' redefines a built-in feature"),
    ("act gelu = x", "act 'gelu' redefines a built-in act"),
])
def test_duplicate_definitions(src: str, message: str) -> None:
    d = only(src)
    assert d.code == "E120"
    assert d.message.startswith(message), d.message


def test_same_name_in_different_kinds_is_fine() -> None:
    program = miras.check("bias f = sum(y)\nfeature f = x\nact f = x")
    assert [type(d).__name__ for d in program.definitions] == ["BiasDef", "FeatureDef", "ActDef"]


def test_user_bias_name_is_not_a_retention() -> None:
    d = only("bias mine = sum(y)\n" + spec(retention="mine"))
    assert (d.code, d.message) == ("E101", "unknown retention 'mine'")


@pytest.mark.parametrize(("src", "code", "message"), [
    ("model a extends a { }", "E122", "model 'a' extends itself through a -> a"),
    ("model a extends b { }\nmodel b extends c { }\nmodel c extends a { }", "E122",
     "model 'a' extends itself through a -> b -> c -> a"),
    ("model a extends ghost { }", "E121", "model 'a' extends unknown model 'ghost'"),
])
def test_extends_errors(src: str, code: str, message: str) -> None:
    first = diags(src)[0]
    assert (first.code, first.message) == (code, message)


def test_extends_cycle_reported_once_per_member_not_for_children() -> None:
    src = ("model a extends b { }\nmodel b extends a { }\n"
           "model c extends a { }\nmodel d extends c { }")
    got = [(d.code, d.span.line) for d in diags(src)]  # type: ignore[union-attr]
    assert got == [("E122", 1), ("E122", 2)]


def test_unknown_field_in_parent_reported_at_the_parent_only() -> None:
    src = spec(extra="colour = 1", name="base") + "\nmodel child extends base { heads = 1 }"
    got = [(d.code, d.span.line) for d in diags(src)]  # type: ignore[union-attr]
    assert got == [("E101", 1)]


# ---- gate activations, per-head schedules, misspellings ----------------------------------------

BASE4 = "memory = matrix\n  bias = l2\n  retention = {ret}\n  algorithm = {alg}"


@pytest.mark.parametrize(
    ("ret", "alg", "ok"),
    [
        ("decay(alpha=gate(act=sigmoid))", "gd(lr=gate(act=softplus))", True),
        ("decay(alpha=gate(act=mamba))", "gd(lr=gate(act=exp))", True),
        ("decay(alpha=gate(act=softplus))", "gd", False),  # can exceed 1
        ("decay(alpha=gate(act=sigmoid, scale=2))", "gd", False),  # up to 2
        ("decay", "gd(lr=gate(act=tanh))", False),  # can be negative
        ("decay", "gd(lr=gate(act=identity))", False),
        ("decay(alpha=per_head(1 - 2^(-5 - h)))", "gd", True),
        ("decay(alpha=per_head(2 - h))", "gd", False),  # 2 at h = 0
        ("decay(alpha=per_head(1 - h / 32))", "gd", False),  # negative from h = 33
        ("decay(alpha=per_head(log(h)))", "gd", False),  # undefined at h = 0
    ],
)
def test_gate_and_schedule_ranges(ret: str, alg: str, ok: bool) -> None:
    text = "model m {\n  " + BASE4.format(ret=ret, alg=alg) + "\n}"
    if ok:
        miras.check(text)
    else:
        with pytest.raises(miras.MirasError) as err:
            miras.check(text)
        assert set(err.value.codes) <= {"E104", "E111"}


def test_gate_range_message_suggests_activations() -> None:
    with pytest.raises(miras.MirasError) as err:
        miras.check("model m {\n  " + BASE4.format(ret="decay(alpha=gate(act=exp))", alg="gd")
                    + "\n}")
    (d,) = err.value.diagnostics
    assert "act=exp" in d.message and "act=sigmoid" in d.message and "act=mamba" in d.message


def test_misspelled_required_field_is_one_diagnostic() -> None:
    with pytest.raises(miras.MirasError) as err:
        miras.check("model m { memory = matrix  bias = l2  retntion = none  algorithm = gd }")
    assert err.value.codes == ["E101"]
    assert "did you mean 'retention'" in err.value.diagnostics[0].message


def test_byte_order_mark_is_accepted(tmp_path) -> None:
    p = tmp_path / "bom.miras"
    p.write_bytes(b"\xef\xbb\xbfmodel m { memory = matrix bias = l2 retention = none "
                  b"algorithm = gd }")
    assert miras.load(p).name == "m"


def test_exact_accepts_other_affine_updates() -> None:
    for bias, ret in (("lp(p=2)", "none"), ("l2", "bregman(potential=quadratic)")):
        miras.check(f"model m {{ memory = matrix  bias = {bias}  retention = {ret}  "
                    "algorithm = gd  parallel = exact(size=16) }")
