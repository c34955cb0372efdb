"""Hand-written NumPy BPTT: the "what a competent person writes by hand" baseline.

One function per model, each a full training step: forward over the whole
sequence (caching every step's activations), summed softmax cross-entropy,
and backpropagation through time that accumulates the weight gradients step
by step (``dW += dz.T @ h_prev`` inside the loop). Deliberately plain
textbook code -- no preallocated buffers, no GEMMs batched across time --
because it stands for the hand-written NumPy a user would otherwise write.

The dtype follows the inputs (float32 for timing, float64 for gradient
checks). Parameter names and layouts match tinygraph's cells and PyTorch's
stacked gate rows:

* ``rnn_char_step``: U (H, K), W (H, H), b (H), V (K, H), c (K)
* ``lstm_step``:     U (4H, D), W (4H, H), b (4H), gates [i, f, g, o]
* ``gru_step``:      U (3H, D), W (3H, H), b (3H), b_hn (H), gates [r, z, n]

Each returns ``(loss, grads)`` with ``grads`` keyed like ``params``.
"""
import numpy as np

__all__ = ["sigmoid", "softmax_cross_entropy", "rnn_char_step", "lstm_step", "gru_step", "STEPS"]


def sigmoid(z):
    """The logistic function, written the textbook way."""
    return 1 / (1 + np.exp(-z))


def softmax_cross_entropy(logits, targets):
    """Summed cross-entropy of (B, C) ``logits`` against (B,) class ids; returns (loss, dlogits).

    Subtracting the row maximum keeps ``exp`` from overflowing.
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(targets))
    loss = -np.log(p[rows, targets]).sum()
    dlogits = p
    dlogits[rows, targets] -= 1
    return loss, dlogits


def rnn_char_step(params, x, targets):
    """Char RNN: h_t = tanh(U x_t + W h_{t-1} + b), o_t = V h_t + c, loss = sum CE(o_t, y_t).

    ``x`` is one-hot (T, B, K), ``targets`` (T, B) ints; h_0 = 0.
    """
    U, W, b, V, c = params["U"], params["W"], params["b"], params["V"], params["c"]
    T, B, _ = x.shape
    H = W.shape[0]
    h = np.zeros((B, H), dtype=x.dtype)
    hs, dos = [h], []
    loss = 0.0
    for t in range(T):
        h = np.tanh(x[t] @ U.T + h @ W.T + b)
        step_loss, do = softmax_cross_entropy(h @ V.T + c, targets[t])
        loss += step_loss
        hs.append(h)
        dos.append(do)

    grads = {name: np.zeros_like(p) for name, p in params.items()}
    dh_next = np.zeros((B, H), dtype=x.dtype)
    for t in reversed(range(T)):
        h, h_prev, do = hs[t + 1], hs[t], dos[t]
        grads["V"] += do.T @ h
        grads["c"] += do.sum(axis=0)
        dh = do @ V + dh_next
        da = dh * (1 - h * h)
        grads["U"] += da.T @ x[t]
        grads["W"] += da.T @ h_prev
        grads["b"] += da.sum(axis=0)
        dh_next = da @ W
    return loss, grads


def lstm_step(params, x, targets):
    """LSTM with loss = sum_t CE(h_t, y_t) (the hidden state is the logits over H classes).

    ``x`` (T, B, D), ``targets`` (T, B) ints in [0, H); h_0 = c_0 = 0.
    """
    U, W, b = params["U"], params["W"], params["b"]
    T, B, _ = x.shape
    H = W.shape[1]
    h = np.zeros((B, H), dtype=x.dtype)
    c = np.zeros((B, H), dtype=x.dtype)
    cache = []
    loss = 0.0
    for t in range(T):
        z = x[t] @ U.T + h @ W.T + b
        i = sigmoid(z[:, :H])
        f = sigmoid(z[:, H:2 * H])
        g = np.tanh(z[:, 2 * H:3 * H])
        o = sigmoid(z[:, 3 * H:])
        c_new = f * c + i * g
        tc = np.tanh(c_new)
        h_new = o * tc
        step_loss, dh_out = softmax_cross_entropy(h_new, targets[t])
        loss += step_loss
        cache.append((h, c, i, f, g, o, tc, dh_out))
        h, c = h_new, c_new

    grads = {name: np.zeros_like(p) for name, p in params.items()}
    dh_next = np.zeros((B, H), dtype=x.dtype)
    dc_next = np.zeros((B, H), dtype=x.dtype)
    for t in reversed(range(T)):
        h_prev, c_prev, i, f, g, o, tc, dh_out = cache[t]
        dh = dh_out + dh_next
        do = dh * tc
        dc = dc_next + dh * o * (1 - tc * tc)
        di = dc * g
        df = dc * c_prev
        dg = dc * i
        dz = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)], axis=1)
        grads["U"] += dz.T @ x[t]
        grads["W"] += dz.T @ h_prev
        grads["b"] += dz.sum(axis=0)
        dh_next = dz @ W
        dc_next = dc * f
    return loss, grads


def gru_step(params, x, targets):
    """GRU (PyTorch's formulation) with loss = sum_t CE(h_t, y_t).

    r = s(U_r x + W_r h + b_r), z = s(U_z x + W_z h + b_z),
    n = tanh(U_n x + b_n + r * (W_n h + b_hn)), h' = (1 - z) * n + z * h.
    """
    U, W, b, b_hn = params["U"], params["W"], params["b"], params["b_hn"]
    T, B, _ = x.shape
    H = W.shape[1]
    h = np.zeros((B, H), dtype=x.dtype)
    cache = []
    loss = 0.0
    for t in range(T):
        gx = x[t] @ U.T + b
        gh = h @ W.T
        r = sigmoid(gx[:, :H] + gh[:, :H])
        z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
        hn = gh[:, 2 * H:] + b_hn
        n = np.tanh(gx[:, 2 * H:] + r * hn)
        h_new = (1 - z) * n + z * h
        step_loss, dh_out = softmax_cross_entropy(h_new, targets[t])
        loss += step_loss
        cache.append((h, r, z, n, hn, dh_out))
        h = h_new

    grads = {name: np.zeros_like(p) for name, p in params.items()}
    dh_next = np.zeros((B, H), dtype=x.dtype)
    for t in reversed(range(T)):
        h_prev, r, z, n, hn, dh_out = cache[t]
        dh = dh_out + dh_next
        dn = dh * (1 - z)
        dz = dh * (h_prev - n)
        dan = dn * (1 - n * n)          # gradient at n's pre-activation
        dr = dan * hn
        dhn = dan * r                   # gradient at W_n h + b_hn
        dar = dr * r * (1 - r)
        daz = dz * z * (1 - z)
        dgx = np.concatenate([dar, daz, dan], axis=1)  # x-side pre-activations
        dgh = np.concatenate([dar, daz, dhn], axis=1)  # h-side pre-activations
        grads["U"] += dgx.T @ x[t]
        grads["W"] += dgh.T @ h_prev
        grads["b"] += dgx.sum(axis=0)
        grads["b_hn"] += dhn.sum(axis=0)
        dh_next = dh * z + dgh @ W
    return loss, grads


# model kind -> reference step
STEPS = {"rnn_char": rnn_char_step, "lstm": lstm_step, "gru": gru_step}
