"""MAML's exact one-step meta-gradient for conv-4 (strided downsampling, cross-entropy) with no autograd at all.

Why: differentiating through `adapt` recorded the support pass, the per-task query pass and the explicit first
inner step, then walked a double-backward graph; the support pass and its double backward were ~45% of a
meta-step (benchmarks/bench_meta_step.py --model conv4), mostly autograd bookkeeping, layout conversions,
stacks of per-task pieces and full-size batch-norm temporaries. Here, for one inner SGD step:

* support forward/backward at the shared theta, tasks folded into one channels-last batch (one convolution per
  layer and its transpose), per-task weight gradients g_i; phi_i = theta - alpha * g_i;
* query: per task, forward and explicit backward with phi_i (channels-last convolutions and native batch
  norm; each task's activations stay in cache), giving v_i = d(mean_j L_query_j)/d(phi_i);
* second order: sum_i H_i v_i, H_i the Hessian of task i's support loss at theta, by Pearlmutter's R-operator
  (exact Hessian-vector products) through the linear head, cross-entropy, ReLU, batch norm with batch
  statistics and convolutions. The weights are shared at theta, so R-forward and R-backward fold the tasks
  into one convolution where they meet theta; only the terms with the per-task directions v_i are per task
  (small 1-shot convolutions), and the weight products are summed over tasks inside single calls;
* meta-gradient: sum_i v_i - alpha * sum_i H_i v_i (first order: sum_i v_i); where the inner step adapts a
  subset (ANIL: the head; BOIL: the body), sum_i v_i - alpha * sum_i H_i (M v_i) with M the subset's 0/1 mask.

The first layer sees K = 9 * channels patch columns, so it never materializes its pre-activations: batch-norm
statistics and every reduction against them (in all three passes) are [K, F] products with the patches'
covariance, accumulated in float64 (`_Patches`); only its ReLU output and the gradients at it are full size.
Conv biases get exactly zero gradients: batch norm removes a per-channel shift, so no loss depends on them.

Per-task weight gradients of the later convolutions stay per-task tensors (a tuple, summed while each is in cache):
stacking 32 of them into one tensor, summing it in a permuted layout and unbinding it again cost ~20 ms of copies
per step. Measured (process clock, before/after in one session): 1 thread 419-435 ms -> 266-284 ms per meta-step
when this path replaced autograd; later (another day, same machine, a slower moment) 364 -> 334 ms from the copies
above and ~2.5% more from splitting block 1's query backward; 1.9-2.0x the per-task autograd loop on one thread,
2.3x on two (`benchmarks/bench_meta_step.py --model conv4`, docs/image_tasks.md "Time to accuracy"). The
convolutions are ~75% of the step and run near this CPU's peak. Equals autograd to rounding error in float64
(tests/core/test_conv4_explicit.py; float32 within ~3e-6 of float64).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .mlp_meta import ExplicitMetaGradient

_CL = torch.channels_last


@dataclass
class Conv4MetaGradient(ExplicitMetaGradient):
    support_pred: torch.Tensor | None = None  # logits of theta on the support sets [B, K, ways] (computed anyway)


def supports(model, loss_fn, x: torch.Tensor, steps: int) -> bool:
    """Cross-entropy, strided downsampling, one inner step, on the CPU (where this path was measured)."""
    from ..tasks.losses import cross_entropy_per_task

    return (loss_fn is cross_entropy_per_task and model.downsample == "stride" and steps == 1
            and x.device.type == "cpu")


def _cl_parts(w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-task conv weights [B, F, C, kh, kw] as B channels-last views of one copy."""
    return tuple(p.permute(0, 3, 1, 2) for p in w.permute(0, 1, 3, 4, 2).contiguous().unbind(0))


def _cl_empty(like: torch.Tensor, b: int) -> torch.Tensor:
    """An uninitialized [B, F, C, kh, kw] buffer whose per-task slices are channels-last (the layout of
    convolution weight gradients here), so that writing them and `_cl_parts` of the whole are plain copies/views."""
    f, c, kh, kw = like.shape[-4:]
    return like.new_empty(b, f, kh, kw, c).permute(0, 1, 4, 2, 3)


def _parts(w) -> tuple[torch.Tensor, ...]:
    """Per-task conv weights given as [B, F, C, kh, kw] or as a tuple of per-task tensors -> the tuple."""
    return w if isinstance(w, tuple) else _cl_parts(w)


# oneDNN's backward of a stride-2 3x3 convolution over a 14x14 map (block 1 of the 28x28 conv-4, the largest
# per-task call) is ~10% faster as two calls, data then weights, than as one call computing both
_SPLIT_BACKWARD_MIN_PIXELS = 100


def _relu_grad_(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """g * (a > 0), in place (a: the ReLU's output): a fresh [M, F] buffer costs page faults."""
    return torch.ops.aten.threshold_backward.grad_input(g, a, 0.0, grad_input=g)


def _rows(t4: torch.Tensor, b: int) -> torch.Tensor:
    """[B*N, F, H, W] (channels-last) -> [B, N*H*W, F] (a view when channels-last)."""
    return t4.permute(0, 2, 3, 1).reshape(b, -1, t4.shape[1])


def _nchw(rows: torch.Tensor, n_total: int, ho: int, wo: int) -> torch.Tensor:
    """[B, N*H*W, F] -> [B*N, F, H, W], channels-last in memory (a view)."""
    return rows.reshape(n_total, ho, wo, rows.shape[-1]).permute(0, 3, 1, 2)


class _Patches:
    """First-layer patches of B tasks and their per-task statistics. The first layer is z = X W + b with X the
    [M, K] im2col patches of a task's images (K = 9 * channels, small) and W [K, F], so batch norm's statistics
    and every reduction against z or x-hat are [K, F] matrix products: with S the patches' covariance,
    var(z) = diag(W^T S W) (in float64: no cancellation), and with Xc the centred patches
    sum_m dy * xhat = rstd * sum_k W (Xc^T dy). Only the ReLU output and the gradients at it are [M, F]."""

    def __init__(self, model, h: torch.Tensor, b: int):
        s = model._stride
        n_img, c = h.shape[:2]
        ho, wo = model._out_size(h.shape[2:])
        self.k = k = 9 * c
        # [patches, 1] in one buffer, (kh, kw, C) order as Conv4._im2col: one product gives X^T g and sum_m g
        padded = F.pad(h.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # [N, H + 2, W + 2, C]
        x1 = h.new_empty(n_img, ho, wo, k + 1)
        for kh in range(3):  # one strided copy per kernel offset: 3x faster than one 6-d gather for C = 1
            for kw in range(3):
                o = (3 * kh + kw) * c
                x1[..., o:o + c].copy_(padded[:, kh:kh + s * (ho - 1) + 1:s, kw:kw + s * (wo - 1) + 1:s])
        x1[..., k] = 1.0
        self.shape = (ho, wo)
        self.x1 = x1 = x1.view(b, -1, k + 1)  # [B, M, K + 1]
        self.m = m = x1.shape[1]
        # E[x1 x1^T] in float64, a few tasks at a time (their float64 copy stays in cache)
        gram = x1.new_empty(b, k + 1, k + 1, dtype=torch.float64)
        step = max(1, (1 << 20) // (8 * m * (k + 1)))
        for lo in range(0, b, step):
            xd = x1[lo:lo + step].to(torch.float64)
            torch.bmm(xd.transpose(1, 2), xd, out=gram[lo:lo + step])
        gram.div_(m)
        mean = gram[:, k:, :k]  # [B, 1, K]
        self.cov = gram[:, :k, :k] - mean.transpose(1, 2) * mean  # S [B, K, K], float64
        self.mean = mean.to(h.dtype)

    def stats(self, wm: torch.Tensor, eps: float):
        """wm: [K, F] or [B, K, F] -> (S W [B, K, F] float64, rstd [B, 1, F] in wm's dtype)."""
        wd = wm.to(torch.float64)
        sw = torch.matmul(self.cov, wd)
        var = (sw * wd).sum(1, keepdim=True)
        return sw, torch.rsqrt(var + eps).to(wm.dtype)

    def weights(self, e: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """[B, K + 1, F] such that x1 @ it = Xc e + beta (e [B, K, F], beta [B, 1, F])."""
        return torch.cat([e, torch.baddbmm(beta, self.mean, e, alpha=-1.0)], 1)

    def centred(self, gb: torch.Tensor):
        """gb = x1^T g [B, K + 1, F] -> (Xc^T g [B, K, F], sum_m g [B, 1, F])."""
        g_sum = gb[:, -1:]
        return torch.baddbmm(gb[:, :-1], self.mean.transpose(1, 2), g_sum, alpha=-1.0), g_sum


def _first_weight(wm: torch.Tensor, c: int) -> torch.Tensor:
    """[..., K, F] patch weights ((kh, kw, C) order) -> conv weights [..., F, C, 3, 3]."""
    f = wm.shape[-1]
    return wm.transpose(-1, -2).reshape(*wm.shape[:-2], f, 3, 3, c).movedim(-1, -3)


def _patch_weight(w: torch.Tensor) -> torch.Tensor:
    """conv weights [..., F, C, 3, 3] -> [..., K, F] in the (kh, kw, C) order of `Conv4._im2col`."""
    return w.movedim(-3, -1).flatten(-3).transpose(-1, -2)


class _Layer:
    """What one block of the support pass keeps for the backward and R-passes ([B, M, F] unless noted)."""

    __slots__ = ("h_in", "ho", "wo", "m", "xhat", "rstd", "gamma", "scale", "a", "dy", "u", "dz", "dgamma",
                 "dbeta", "rz", "rz_mean", "c", "wm", "sw", "g", "wm_v")


class Conv4Meta:
    """The three passes of one meta-gradient; `support` first, then `query`, then `hvp_sum`."""

    def __init__(self, model, params):
        self.model = model
        self.s = model._stride
        self.eps = model.eps
        self.blocks = model.blocks
        self.head = model._head
        # shared conv weights in the activations' channels-last layout: convolutions would convert them per call
        self.w_cl = {k: params[f"{model._names(k)[0]}.weight"].detach().contiguous(memory_format=_CL)
                     for k in range(1, self.blocks)}

    def _conv_names(self, k):
        return self.model._names(k)

    def _out_pad(self, h_in_size, ho, wo):
        s = self.s
        return tuple(int(i) - ((o - 1) * s + 1) for i, o in zip(h_in_size, (ho, wo)))

    def _wgrad(self, h_in: torch.Tensor, dz: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        s = self.s
        return torch.ops.aten.convolution_backward(dz, h_in, weight, None, [s, s], [1, 1], [1, 1], False, [0, 0], 1,
                                                   [False, True, False])[1]

    # -- support pass at theta: tasks folded ----------------------------------------------------------------

    def support(self, p, x: torch.Tensor, y: torch.Tensor, lr: float | None = None):
        """Forward and backward of the per-task support losses at shared p; returns losses [B], per-task
        gradients {name: [B, ...], conv weights after the first: tuples of per-task tensors} and fills
        self.layers / head state for the R-pass. With `lr`, also the adapted conv weights p - lr * g_i of those
        layers, written while each g_i is in cache (self.adapted_convs {name: [B, ...]}, for `adapted`)."""
        self.adapted_convs = {}
        model, s = self.model, self.s
        b, n = x.shape[:2]
        self.b, self.n = b, n
        h = x.reshape(b * n, *x.shape[2:]).contiguous(memory_format=_CL)
        self.patches = pt = _Patches(model, h, b)
        layers = []
        for k in range(self.blocks):
            conv, bn = self._conv_names(k)
            w = p[f"{conv}.weight"]
            f = w.shape[0]
            L = _Layer()
            L.h_in = h
            L.gamma = p[f"{bn}.weight"]
            if k == 0:  # batch norm from the patch statistics, fused into one product: a = relu(Xc (W scale) + beta)
                L.ho, L.wo = pt.shape
                L.m = pt.m
                L.wm = _patch_weight(w)
                sw, L.rstd = pt.stats(L.wm, self.eps)
                L.sw = sw.to(w.dtype)
                L.scale = L.gamma * L.rstd
                L.a = torch.relu_(torch.bmm(pt.x1, pt.weights(L.wm * L.scale, p[f"{bn}.bias"].expand(b, 1, f))))
                h = _nchw(L.a, b * n, L.ho, L.wo)
                layers.append(L)
                continue
            z4 = F.conv2d(h, self.w_cl[k], None, stride=s, padding=1)
            L.ho, L.wo = z4.shape[2:]
            z = _rows(z4, b)
            L.m = z.shape[1]
            mean = z.mean(1, keepdim=True)
            zc = z - mean
            L.rstd = torch.rsqrt((zc * zc).mean(1, keepdim=True) + self.eps)
            L.xhat = zc.mul_(L.rstd)
            L.scale = L.gamma * L.rstd
            L.a = torch.relu_(torch.addcmul(p[f"{bn}.bias"], L.xhat, L.gamma))
            h = _nchw(L.a, b * n, L.ho, L.wo)
            layers.append(L)
        self.layers = layers
        w_head = p[f"{self.head}.weight"]
        self.feats = feats = h.reshape(b, n, -1)  # NCHW flattening order, as nn.Flatten
        self.support_logits = logits = F.linear(feats, w_head, p[f"{self.head}.bias"])
        logp = torch.log_softmax(logits, -1)
        losses = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1)
        self.prob = prob = logp.exp_()
        self.dlogits = dlogits = (prob - F.one_hot(y, logits.shape[-1]).to(prob.dtype)) * (1.0 / n)
        grads = {f"{self.head}.weight": torch.bmm(dlogits.transpose(1, 2), feats),
                 f"{self.head}.bias": dlogits.sum(1)}
        da = torch.matmul(dlogits, w_head).view(b * n, -1, layers[-1].ho, layers[-1].wo)  # NCHW
        da = _rows(da, b)
        for k in reversed(range(self.blocks)):
            conv, bn = self._conv_names(k)
            L = layers[k]
            f = L.a.shape[-1]
            L.dy = dy = _relu_grad_(da, L.a)
            if k == 0:
                L.g, L.dbeta = pt.centred(torch.bmm(pt.x1.transpose(1, 2), dy))
                L.dgamma = L.rstd * (L.wm * L.g).sum(1, keepdim=True)
                grads[f"{bn}.weight"] = L.dgamma.squeeze(1)
                grads[f"{bn}.bias"] = L.dbeta.squeeze(1)
                grads[f"{conv}.bias"] = dy.new_zeros(b, f)
                # X^T dz = scale * Xc^T (dy - mean dy - xhat dgamma / M) = scale * (Xc^T dy - S W rstd dgamma)
                gw = L.scale * torch.addcmul(L.g, L.sw, L.rstd * L.dgamma, value=-1.0)
                grads[f"{conv}.weight"] = _first_weight(gw, pt.k // 9)
                continue
            L.dbeta = dy.sum(1, keepdim=True)
            L.dgamma = (dy * L.xhat).sum(1, keepdim=True)
            L.u = torch.addcmul(dy - L.dbeta * (1.0 / L.m), L.xhat, L.dgamma, value=-1.0 / L.m)
            L.dz = L.u * L.scale
            grads[f"{bn}.weight"] = L.dgamma.squeeze(1)
            grads[f"{bn}.bias"] = L.dbeta.squeeze(1)
            grads[f"{conv}.bias"] = L.dz.new_zeros(b, f)  # batch norm removes a per-channel shift
            w = self.w_cl.get(k)
            dz4 = _nchw(L.dz, b * n, L.ho, L.wo)
            phi_out = None
            if lr is not None:
                phi_out = self.adapted_convs[f"{conv}.weight"] = _cl_empty(p[f"{conv}.weight"], b)
            grads[f"{conv}.weight"] = self._per_task_wgrad(L.h_in, dz4, w, b, phi_out, lr)
            out = F.conv_transpose2d(dz4, w, None, stride=s, padding=1,
                                     output_padding=self._out_pad(L.h_in.shape[2:], L.ho, L.wo))
            da = _rows(out, b)
        return losses, grads

    def _per_task_wgrad(self, h_in, dz4, w, b, phi_out=None, lr=None):
        """Per-task weight gradients as a tuple (stacking 32 of them only to unbind them again costs copies);
        phi_out [B, ...] (layout of `_cl_empty`): also w - lr * g_i there."""
        grads = tuple(self._wgrad(i, d, w) for i, d in zip(h_in.chunk(b), dz4.chunk(b)))
        if phi_out is not None:
            w_phys = w.permute(0, 2, 3, 1)  # w is channels-last: [F, kh, kw, C] contiguous
            for o, gi in zip(phi_out.permute(0, 1, 3, 4, 2).unbind(0), grads):
                torch.sub(w_phys, gi.permute(0, 2, 3, 1), alpha=lr, out=o)
        return grads

    # -- query pass with per-task weights --------------------------------------------------------------------

    def query(self, phi, x: torch.Tensor, y: torch.Tensor, scale: float):
        """Per task: forward and backward with phi_i. Returns logits [B, Q, ways], losses [B], the gradients v_i
        of scale * sum_i L_i with respect to phi_i ({name: [B, ...]}, but the convolutions after the first as
        tuples of per-task channels-last tensors, as `hvp_sum` uses them) and their sums over tasks {name: [...]}."""
        model, s, eps = self.model, self.s, self.eps
        b, n = x.shape[:2]
        xs = x.reshape(b * n, *x.shape[2:]).contiguous(memory_format=_CL)
        pt = _Patches(model, xs, b)
        ho0, wo0 = pt.shape
        conv0, bn0 = self._conv_names(0)
        wm = _patch_weight(phi[f"{conv0}.weight"])  # [B, K, F]
        f0 = wm.shape[-1]
        sw, rstd0 = pt.stats(wm, eps)
        scale0 = phi[f"{bn0}.weight"].unsqueeze(1) * rstd0
        weff = pt.weights(wm * scale0, phi[f"{bn0}.bias"].unsqueeze(1))  # first block: relu(x1 weff)
        gb = x.new_empty(b, pt.k + 1, f0)  # x1^T dy per task
        blocks = range(1, self.blocks)
        names = [self._conv_names(k) for k in range(self.blocks)]
        # per-task views made once (indexing inside the loop costs a dispatch each time)
        convs = [_cl_parts(phi[f"{names[k][0]}.weight"]) for k in blocks]
        gammas = [phi[f"{names[k][1]}.weight"].unbind(0) for k in blocks]
        betas = [phi[f"{names[k][1]}.bias"].unbind(0) for k in blocks]
        w_head, b_head = phi[f"{self.head}.weight"], phi[f"{self.head}.bias"]
        ways = w_head.shape[1]
        logits_all = x.new_empty(b, n, ways)
        onehot = F.one_hot(y, ways).to(x.dtype)
        out = {}
        dlogits_all = x.new_empty(b, n, ways)
        feats_all = x.new_empty(b, n, w_head.shape[2])
        grads = [([], [], []) for _ in blocks]  # per block: conv weight, bn weight, bn bias gradients per task
        conv_sums = [None] * len(grads)  # summed while each task's gradient is still in cache
        conv_args = ([s, s], [1, 1], [1, 1], False, [0, 0], 1)
        a0_buf = x.new_empty(pt.m, f0)  # one task's first-block output, reused: a fresh 1.25 MB per task faults pages
        for i, (x1, we, wh, bh, lg, oh, dl, fe, gbi) in enumerate(zip(
                pt.x1.unbind(0), weff.unbind(0), w_head.unbind(0), b_head.unbind(0), logits_all.unbind(0),
                onehot.unbind(0), dlogits_all.unbind(0), feats_all.unbind(0), gb.unbind(0))):
            a0 = torch.relu_(torch.mm(x1, we, out=a0_buf)).view(n, ho0, wo0, f0).permute(0, 3, 1, 2)
            h = a0
            saved = []
            for j in range(len(convs)):  # conv biases are left out: batch norm removes them
                z = F.conv2d(h, convs[j][i], None, stride=s, padding=1)
                a, mean, invstd = torch.native_batch_norm(z, gammas[j][i], betas[j][i], None, None, True, 0.0, eps)
                torch.relu_(a)
                saved.append((h, z, mean, invstd, a))
                h = a
            fe.copy_(h.reshape(n, -1))
            torch.addmm(bh, fe, wh.t(), out=lg)
            torch.mul(torch.softmax(lg, -1).sub_(oh), scale / n, out=dl)
            da = torch.mm(dl, wh).view(h.shape)
            for j in reversed(range(len(convs))):
                h_in, z, mean, invstd, a = saved[j]
                dy = _relu_grad_(da, a)
                dz, dgamma, dbeta = torch.ops.aten.native_batch_norm_backward(
                    dy, z, gammas[j][i], None, None, mean, invstd, True, eps, [True, True, True])
                if h_in.shape[2] * h_in.shape[3] >= _SPLIT_BACKWARD_MIN_PIXELS:
                    da = torch.ops.aten.convolution_backward(dz, h_in, convs[j][i], None, *conv_args,
                                                             [True, False, False])[0]
                    gw = torch.ops.aten.convolution_backward(dz, h_in, convs[j][i], None, *conv_args,
                                                             [False, True, False])[1]
                else:
                    da, gw, _ = torch.ops.aten.convolution_backward(dz, h_in, convs[j][i], None, *conv_args,
                                                                    [True, True, False])
                gj = grads[j]
                gj[0].append(gw)
                if conv_sums[j] is None:
                    conv_sums[j] = gw.clone()
                else:
                    conv_sums[j].add_(gw)
                gj[1].append(dgamma)
                gj[2].append(dbeta)
            dy = _relu_grad_(da, a0)
            torch.mm(x1.t(), dy.permute(0, 2, 3, 1).reshape(-1, f0), out=gbi)
        sums = {}
        for j, k in enumerate(blocks):
            conv, bn = names[k]
            out[f"{conv}.weight"] = tuple(grads[j][0])
            sums[f"{conv}.weight"] = conv_sums[j]
            out[f"{conv}.bias"] = x.new_zeros(b, f0)
            out[f"{bn}.weight"] = torch.stack(grads[j][1])
            out[f"{bn}.bias"] = torch.stack(grads[j][2])
        out[f"{conv0}.bias"] = x.new_zeros(b, f0)
        out[f"{self.head}.weight"] = torch.bmm(dlogits_all.transpose(1, 2), feats_all)
        out[f"{self.head}.bias"] = dlogits_all.sum(1)
        losses = -torch.log_softmax(logits_all, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1)
        # first block, all tasks at once (see _Patches)
        g, dbeta = pt.centred(gb)
        dgamma = rstd0 * (wm * g).sum(1, keepdim=True)
        out[f"{bn0}.weight"] = dgamma.squeeze(1)
        out[f"{bn0}.bias"] = dbeta.squeeze(1)
        out[f"{conv0}.weight"] = _first_weight(scale0 * torch.addcmul(g, sw.to(g.dtype), rstd0 * dgamma, value=-1.0),
                                               pt.k // 9)
        for k, t in out.items():
            if k not in sums:
                sums[k] = t.sum(0)
        return logits_all, losses, OrderedDict((k, out[k]) for k in phi), OrderedDict((k, sums[k]) for k in phi)

    def query_logits(self, phi, x: torch.Tensor) -> torch.Tensor:
        """Per task: the forward pass alone with phi_i (logits [B, Q, ways]), for metrics of an adaptation."""
        s, eps = self.s, self.eps
        b, n = x.shape[:2]
        pt = _Patches(self.model, x.reshape(b * n, *x.shape[2:]).contiguous(memory_format=_CL), b)
        conv0, bn0 = self._conv_names(0)
        wm = _patch_weight(phi[f"{conv0}.weight"])  # [B, K, F]
        rstd0 = pt.stats(wm, eps)[1]
        weff = pt.weights(wm * (phi[f"{bn0}.weight"].unsqueeze(1) * rstd0), phi[f"{bn0}.bias"].unsqueeze(1))
        h_all = _nchw(torch.relu_(torch.bmm(pt.x1, weff)), b * n, *pt.shape)
        names = [self._conv_names(k) for k in range(1, self.blocks)]
        convs = [_parts(phi[f"{conv}.weight"]) for conv, _ in names]
        w_head, b_head = phi[f"{self.head}.weight"], phi[f"{self.head}.bias"]
        logits = x.new_empty(b, n, w_head.shape[1])
        for i, h in enumerate(h_all.chunk(b)):
            for j, (_, bn) in enumerate(names):
                z = F.conv2d(h, convs[j][i], None, stride=s, padding=1)
                h = torch.relu_(torch.native_batch_norm(z, phi[f"{bn}.weight"][i], phi[f"{bn}.bias"][i], None, None,
                                                        True, 0.0, eps)[0])
            torch.addmm(b_head[i], h.reshape(n, -1), w_head[i].t(), out=logits[i])
        return logits

    # -- second order: sum_i H_i v_i at theta -----------------------------------------------------------------

    def hvp_sum(self, p, v):
        """sum over tasks of (Hessian of task i's support loss at p) times v_i ({name: [B, ...]})."""
        s, b, n = self.s, self.b, self.n
        layers = self.layers
        out = {}
        rh = None  # R(h) of the block input, [B*N, C, H, W] channels-last
        rhs = []  # R(h) of each block's output
        vparts = {k: _parts(v[f"{self._conv_names(k)[0]}.weight"]) for k in range(1, self.blocks)}
        for k in range(self.blocks):
            conv, bn = self._conv_names(k)
            L = layers[k]
            vw = v[f"{conv}.weight"]
            f = L.a.shape[-1]
            if k == 0:
                # R(y) = scale R(z - mean z) + xhat (v_gamma - scale c) + v_beta, linear in the patches;
                # c = mean(xhat R(z)) = rstd * sum_k (S W) V
                pt = self.patches
                L.wm_v = vm = _patch_weight(vw)  # [B, K, F]
                vg, vb = v[f"{bn}.weight"].unsqueeze(1), v[f"{bn}.bias"].unsqueeze(1)
                L.c = L.rstd * (L.sw * vm).sum(1, keepdim=True)
                weff = pt.weights(torch.addcmul(vm * L.scale, L.wm, L.rstd * (vg - L.scale * L.c)), vb)
                # into the buffer of the first block's dy, which the R-pass no longer needs
                ra = _relu_grad_(torch.bmm(pt.x1, weff, out=L.dy), L.a)
                rh = _nchw(ra, b * n, L.ho, L.wo)
                rhs.append(rh)
                continue
            # R(z) = conv(R(h), W) (tasks folded) + conv(h_i, V_i) (per task)
            rz4 = F.conv2d(rh, self.w_cl[k], None, stride=s, padding=1)
            parts = vparts[k]
            for i, hi in enumerate(L.h_in.chunk(b)):
                rz4[i * n:(i + 1) * n].add_(F.conv2d(hi, parts[i], None, stride=s, padding=1))
            rz = _rows(rz4, b)
            # batch norm (batch statistics): R(xhat) = rstd * (R(z) - mean R(z) - xhat * c), c = mean(xhat R(z))
            L.rz = rz
            L.rz_mean = rz.mean(1, keepdim=True)
            L.c = (L.xhat * rz).mean(1, keepdim=True)
            vg, vb = v[f"{bn}.weight"].unsqueeze(1), v[f"{bn}.bias"].unsqueeze(1)
            # R(y) = gamma R(xhat) + v_gamma xhat + v_beta
            ry = torch.addcmul(torch.addcmul(vb - L.scale * L.rz_mean, L.xhat, vg - L.scale * L.c), rz, L.scale)
            ra = _relu_grad_(ry, L.a)
            rh = _nchw(ra, b * n, L.ho, L.wo)
            rhs.append(rh)
        # head and cross-entropy
        head = self.head
        w_head, vw_head = p[f"{head}.weight"], v[f"{head}.weight"]
        rfeats = rh.reshape(b, n, -1)
        feats, prob, dlogits = self.feats, self.prob, self.dlogits
        rlogits = torch.baddbmm(v[f"{head}.bias"].unsqueeze(1), feats, vw_head.transpose(1, 2))
        rlogits.view(-1, rlogits.shape[-1]).addmm_(rfeats.reshape(b * n, -1), w_head.t())
        pr = prob * rlogits
        rdlogits = torch.addcmul(pr, prob, pr.sum(-1, keepdim=True), value=-1.0).mul_(1.0 / n)
        flat = b * n
        hw = torch.mm(rdlogits.reshape(flat, -1).t(), feats.reshape(flat, -1))
        hw.addmm_(dlogits.reshape(flat, -1).t(), rfeats.reshape(flat, -1))
        out[f"{head}.weight"] = hw
        out[f"{head}.bias"] = rdlogits.sum((0, 1))
        rda = torch.bmm(dlogits, vw_head)
        rda.view(flat, -1).addmm_(rdlogits.reshape(flat, -1), w_head)
        rda = _rows(rda.view(flat, -1, layers[-1].ho, layers[-1].wo), b)
        for k in reversed(range(self.blocks)):
            conv, bn = self._conv_names(k)
            L = layers[k]
            m = L.m
            w = self.w_cl.get(k)
            f = L.a.shape[-1]
            vg = v[f"{bn}.weight"].unsqueeze(1)
            rdy = _relu_grad_(rda, L.a)
            if k == 0:
                pt = self.patches
                rg, r_dbeta = pt.centred(torch.bmm(pt.x1.transpose(1, 2), rdy))
                vm = L.wm_v
                # sum(R(dy) xhat) + rstd (sum(dy (R(z) - mean R(z))) - c dgamma)
                r_dgamma = L.rstd * ((L.wm * rg).sum(1, keepdim=True) + (vm * L.g).sum(1, keepdim=True)
                                     - L.c * L.dgamma)
                out[f"{bn}.bias"] = r_dbeta.sum((0, 1))
                out[f"{bn}.weight"] = r_dgamma.sum((0, 1))
                out[f"{conv}.bias"] = rdy.new_zeros(f)
                # X^T R(dz) from Xc^T u = g - S W rstd dgamma, Xc^T xhat = M S W rstd, Xc^T R(z) = M S V
                r_scale = L.rstd * (vg - L.scale * L.c)
                svm = torch.matmul(pt.cov, vm.to(torch.float64)).to(vm.dtype)
                xtu = torch.addcmul(L.g, L.sw, L.rstd * L.dgamma, value=-1.0)
                hw = r_scale * xtu
                hw.addcmul_(rg, L.scale.expand_as(rg))
                hw.addcmul_(L.sw, L.scale * L.rstd * (L.rstd * L.c * L.dgamma - r_dgamma))
                hw.addcmul_(svm, L.scale * L.rstd * L.dgamma, value=-1.0)
                out[f"{conv}.weight"] = _first_weight(hw.sum(0), pt.k // 9)
                continue
            r_dbeta = rdy.sum(1, keepdim=True)
            # R(dgamma) = sum(R(dy) xhat + dy R(xhat)),
            # sum(dy R(xhat)) = rstd (sum(dy R(z)) - mean R(z) dbeta - c dgamma)
            r_dgamma = (rdy * L.xhat).sum(1, keepdim=True) + L.rstd * (
                (L.dy * L.rz).sum(1, keepdim=True) - L.rz_mean * L.dbeta - L.c * L.dgamma)
            out[f"{bn}.bias"] = r_dbeta.sum((0, 1))
            out[f"{bn}.weight"] = r_dgamma.sum((0, 1))
            out[f"{conv}.bias"] = rdy.new_zeros(f)
            # dz = scale * u, u = dy - dbeta/m - xhat dgamma/m; R(dz) = R(scale) u + scale R(u), expanded into
            # per-(task, channel) coefficients of u, R(dy), xhat and R(z)
            r_scale = L.rstd * (vg - L.scale * L.c)
            k_xhat = L.scale * (L.rstd * L.c * L.dgamma - r_dgamma) * (1.0 / m)
            k_rz = L.scale * L.rstd * L.dgamma * (-1.0 / m)
            const = L.scale * (L.rstd * L.rz_mean * L.dgamma - r_dbeta) * (1.0 / m)
            rdz = torch.addcmul(const, L.u, r_scale)
            rdz.addcmul_(rdy, L.scale).addcmul_(L.xhat, k_xhat).addcmul_(L.rz, k_rz)
            rdz4 = _nchw(rdz, b * n, L.ho, L.wo)
            dz4 = _nchw(L.dz, b * n, L.ho, L.wo)
            out[f"{conv}.weight"] = self._wgrad(rhs[k - 1], dz4, w) + self._wgrad(L.h_in, rdz4, w)
            pad = self._out_pad(L.h_in.shape[2:], L.ho, L.wo)
            ra4 = F.conv_transpose2d(rdz4, w, None, stride=s, padding=1, output_padding=pad)
            parts = vparts[k]
            for i, di in enumerate(dz4.chunk(b)):
                ra4[i * n:(i + 1) * n].add_(F.conv_transpose2d(di, parts[i], None, stride=s, padding=1,
                                                               output_padding=pad))
            rda = _rows(ra4, b)
        return out


def adapted(theta, g, lr: float, done=None) -> "OrderedDict[str, torch.Tensor]":
    """phi_i = theta - lr * g_i ([B, ...]), conv weights in the per-task channels-last layout of g; `done`: those
    already computed (`Conv4Meta.support(..., lr)` adapts the convolutions whose gradients it keeps per task)."""
    phi = OrderedDict()
    for k, t in theta.items():
        if done and k in done:
            phi[k] = done[k]
        elif isinstance(g[k], tuple):
            raise ValueError(f"{k}: per-task gradients are adapted by Conv4Meta.support(..., lr), pass its "
                             "adapted_convs as done")
        elif g[k].dim() == 5:  # in the physical [F, kh, kw, C] order of g's slices: a plain broadcast over tasks
            out = _cl_empty(t, g[k].shape[0])
            torch.sub(t.permute(0, 2, 3, 1).reshape(1, -1), g[k].permute(0, 1, 3, 4, 2).reshape(g[k].shape[0], -1),
                      alpha=lr, out=out.permute(0, 1, 3, 4, 2).view(g[k].shape[0], -1))
            phi[k] = out
        else:
            phi[k] = torch.sub(t.unsqueeze(0), g[k], alpha=lr)
    return phi


def mean_loss_grad(model, params, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The mean over tasks of the per-task cross-entropies at shared params and its gradient (a list in params'
    order): the pretrained baseline's step on all tasks' data. It is the query pass with every task's weights at
    theta (forward and backward a task at a time, its activations in cache; gradients summed as they come).
    On 32 tasks of 30 images, one thread: 711 ms by autograd of the generic forward; 271-281 ms by the support
    pass folded over all 960 images; per task 18% faster than folded (271 against 330 ms in one process: the
    folded batch-norm arithmetic runs from memory). Within ~5e-7 of float64 where that autograd is 1e-2 off in
    one layer (its float32 batch norm of the first layer; here float64 statistics, `_Patches`)."""
    b = x.shape[0]
    with torch.no_grad():
        theta = OrderedDict((k, v.detach()) for k, v in params.items())
        phi = OrderedDict((k, v.unsqueeze(0).expand(b, *v.shape)) for k, v in theta.items())
        _, losses, _, sums = Conv4Meta(model, theta).query(phi, x, y, 1.0 / b)
    return losses.mean(), [sums[k] for k in theta]


def adapted_logits(model, params, x_support, y_support, x_query, lr: float):
    """One inner SGD step of size `lr` from shared params on each support set, without autograd: the support
    logits at params [B, K, ways], the support losses [B] and the query logits after the step [B, Q, ways]
    (what the pretrained baseline's post-adaptation metrics need)."""
    with torch.no_grad():
        theta = OrderedDict((k, v.detach()) for k, v in params.items())
        eng = Conv4Meta(model, theta)
        losses, g = eng.support(theta, x_support, y_support, lr)
        phi = adapted(theta, g, lr, eng.adapted_convs)
        return eng.support_logits, losses, eng.query_logits(phi, x_query)


def _held(theta, g, phi, held) -> None:
    """phi[k] = theta[k] for every task where k is held fixed by the inner step (a subset adapts)."""
    for k in held:
        if isinstance(g[k], tuple) or g[k].dim() == 5:  # per-task conv weights: the channels-last layout of g
            out = _cl_empty(theta[k], g[k].shape[0] if not isinstance(g[k], tuple) else len(g[k]))
            out.copy_(theta[k].unsqueeze(0).expand_as(out))
            phi[k] = out
        else:
            phi[k] = theta[k].unsqueeze(0).expand_as(g[k]).contiguous()


def _zero_held(v, held) -> None:
    """The Hessian-vector products' directions M v: held parameters get none (M zeroes them)."""
    for k in held:
        v[k] = tuple(torch.zeros_like(t) for t in v[k]) if isinstance(v[k], tuple) else torch.zeros_like(v[k])


def meta_gradient(model, params, x_support, y_support, x_query, y_query, lr: float,
                  first_order: bool, adapted_names=None) -> ExplicitMetaGradient:
    """MAML (or FOMAML) meta-gradient of the mean query loss after one inner SGD step of size `lr`.

    adapted_names: the inner step adapts only these (ANIL: the head, BOIL: the body; None: all). With M the 0/1
    mask of adapted parameters, phi_i = theta - lr M g_i, so d phi_i / d theta = I - lr M H_i and the meta-gradient
    is sum_i v_i - lr H_i (M v_i): the same passes, held parameters copied instead of stepped and left out of
    the Hessian-vector products' directions."""
    names = list(params)
    held = [k for k in names if adapted_names is not None and k not in adapted_names]
    b = x_support.shape[0]
    with torch.no_grad():
        theta = OrderedDict((k, v.detach()) for k, v in params.items())
        eng = Conv4Meta(model, theta)
        support_losses, g = eng.support(theta, x_support, y_support, lr)
        phi = adapted(theta, g, lr, eng.adapted_convs)
        _held(theta, g, phi, held)
        logits, q_losses, v, grads = eng.query(phi, x_query, y_query, 1.0 / b)
        if not first_order:
            _zero_held(v, held)
            hv = eng.hvp_sum(theta, v)
            for k in names:
                grads[k].sub_(hv[k], alpha=lr)
    return Conv4MetaGradient([grads[k].contiguous() for k in names], q_losses.mean(), [support_losses], phi, logits,
                             eng.support_logits)
