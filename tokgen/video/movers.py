"""Movers: small objects found by their motion, tracked as trajectories of their own.

Appearance segmentation (:mod:`tokgen.video.segment`) paints a small object into the region around it (a walking
person into the pavement), and optical flow on a few pixels is unreliable, so a mover is found and followed by
how it differs from the static scene instead:

1. **Camera motion**: from the clip's backward optical flow (already computed for propagation), per frame
   pair: no motion when most flow vectors are (near) zero, else a robust affine fit (least squares started
   from the median translation and refitted on the vectors that agree with it, so movers do not pull it);
   chained to map every frame into frame 0's coordinates. A clip whose chained motion stays
   under half a pixel is treated as filmed by a static camera.
2. **Background model**: every frame warped into frame 0's coordinates (a canvas covering all of them), and
   the per-pixel temporal median over the frames that see that pixel; warped back into every frame. With a
   moving camera the model is aligned to about a pixel, so a difference that a one-pixel shift of the model
   explains does not count. A mover
   covers any one pixel for only a few frames, so the median is the scene without the movers.
3. **Foreground**: pixels whose colour differs from the background model by more than ``threshold`` (sum of
   the RGB channel differences, in [0, 3]); connected components of at least ``min_pixels`` and at most
   ``max_area`` of the frame are mover candidates (larger moving regions are left to appearance segmentation).
   A candidate whose colour is also that of much of the ring of pixels around it (two pixels out) is part of a
   larger region, not an object of its own: the edge of a large slow object, or a "ghost" where the median
   still shows such an object; it is left out.
4. **Tracking**: candidates are linked frame to frame by one-to-one matching (scipy Hungarian) on the
   distance to each track's predicted position (constant velocity, in frame 0's coordinates, so a camera pan
   is not a motion) plus a colour term, gated by the mover's size; a track survives ``max_gap`` unseen frames
   (occlusion); a candidate next to a mover matched in the same frame joins it (a mover split by the
   threshold). Afterwards a track that starts near where an ended track was heading (and looks like it) is
   joined to it. Tracks seen in fewer than ``min_frames`` frames are dropped as noise.

The result is a ``(T, H, W)`` int32 map: 0 = no mover, k = mover track k (1-based).
"""
from __future__ import annotations

import numpy as np

GRID_STEP = 4  # flow vectors sampled every this many pixels for the camera-motion fit
STILL_PX = 0.25  # a flow vector shorter than this is no motion
STATIC_PX = 0.5  # chained camera motion below this many pixels everywhere = static camera
MIN_VIEWS = 3  # a background pixel needs this many frames that see it
RING_SIMILAR = 0.35  # a candidate whose ring is this similar to it (fraction of ring pixels) is not a mover


def camera_motion(flows: list[np.ndarray], shape: tuple[int, int], scale: float) -> np.ndarray:
    """Backward flows ``flows[t - 1]`` (frame t -> t-1, (h, w, 2) at the flow resolution) -> (T, 2, 3) affines
    that map frame t's pixel coordinates, at ``scale`` times the flow resolution, into frame 0's."""
    h, w = flows[0].shape[:2] if flows else shape
    ys, xs = np.mgrid[GRID_STEP // 2:h:GRID_STEP, GRID_STEP // 2:w:GRID_STEP]
    src = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], 1).astype(np.float64)  # (N, 3)
    chain = [np.eye(3)]
    for flow in flows:
        vectors = flow[ys.ravel(), xs.ravel()].astype(np.float64)
        step = np.eye(3)
        if np.mean(np.linalg.norm(vectors, axis=1) < STILL_PX) < 0.5:
            residual = np.linalg.norm(vectors - np.median(vectors, axis=0), axis=1)
            for _ in range(3):  # fit on the vectors that agree with the last estimate (movers, bad flow left out)
                keep = residual <= max(0.5, 2.5 * float(np.median(residual)))
                if keep.sum() < 6:
                    break
                a, *_ = np.linalg.lstsq(src[keep], src[keep, :2] + vectors[keep], rcond=None)  # (3, 2)
                step[:2] = a.T  # frame t -> t-1 at the flow resolution
                residual = np.linalg.norm(src @ a - src[:, :2] - vectors, axis=1)
        step[:2, 2] *= scale  # the same motion at the mover resolution
        chain.append(chain[-1] @ step)
    return np.stack([m[:2] for m in chain]).astype(np.float32)


def background_model(frames: np.ndarray, affines: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 frames -> (background (T, H, W, 3) float32, valid (T, H, W) bool): the temporal median
    of the scene as seen by every frame (``affines``: frame t -> frame 0 coordinates, None = static camera)."""
    import cv2

    T, H, W = frames.shape[:3]
    if affines is None:
        median = np.sort(np.ascontiguousarray(frames.transpose(1, 2, 3, 0)), axis=-1)[..., (T - 1) // 2]
        return np.broadcast_to(median.astype(np.float32), frames.shape), np.ones((T, H, W), dtype=bool)
    corners = np.array([[0, 0, 1], [W, 0, 1], [0, H, 1], [W, H, 1]], dtype=np.float32)
    seen = np.concatenate([corners @ a.T for a in affines])
    lo = np.maximum(seen.min(0), [-W / 2, -H / 2])
    hi = np.minimum(seen.max(0), [1.5 * W, 1.5 * H])
    size = (int(np.ceil(hi[0] - lo[0])), int(np.ceil(hi[1] - lo[1])))  # canvas (width, height)
    to_canvas = [a.copy() for a in affines]
    for a in to_canvas:
        a[:, 2] -= lo
    stack = np.full((T, size[1], size[0], 3), 65535, dtype=np.uint16)
    ones = np.ones((H, W), dtype=np.uint8)
    for t, a in enumerate(to_canvas):
        warped = cv2.warpAffine(frames[t], a, size, flags=cv2.INTER_LINEAR)
        inside = cv2.warpAffine(ones, a, size, flags=cv2.INTER_NEAREST).astype(bool)
        stack[t][inside] = warped[inside]
    ordered = np.sort(np.ascontiguousarray(stack.transpose(1, 2, 3, 0)), axis=-1)  # invalid (65535) sorts last
    views = (ordered < 65535).sum(-1)  # (Hc, Wc, 3)
    median = np.take_along_axis(ordered, np.maximum(views - 1, 0)[..., None] // 2, -1)[..., 0]
    good = (views[..., 0] >= MIN_VIEWS).astype(np.uint8)
    canvas = np.where(good[..., None] > 0, median, 0).astype(np.float32)
    back = np.empty((T, H, W, 3), dtype=np.float32)
    valid = np.empty((T, H, W), dtype=bool)
    for t, a in enumerate(to_canvas):
        inverse = cv2.invertAffineTransform(a)
        back[t] = cv2.warpAffine(canvas, inverse, (W, H), flags=cv2.INTER_LINEAR)
        valid[t] = cv2.warpAffine(good, inverse, (W, H), flags=cv2.INTER_NEAREST, borderValue=0).astype(bool)
    return back, valid


def detect_movers(frames: np.ndarray, affines: np.ndarray, threshold: float = 0.1, min_pixels: int = 4,
                  max_area: float = 0.02, min_frames: int = 3, max_gap: int = 4,
                  moving_camera: bool = False) -> np.ndarray:
    """(T, H, W, 3) uint8 frames and camera affines (T, 2, 3) (frame t -> frame 0) -> (T, H, W) int32 mover
    track map (0 = none, k = track k). See the module docstring. A clip whose camera moves gets no movers
    unless ``moving_camera`` (its compensated background model still flags too much texture as motion)."""
    import cv2
    from scipy.optimize import linear_sum_assignment

    T, H, W = frames.shape[:3]
    corners = np.array([[0, 0, 1], [W, 0, 1], [0, H, 1], [W, H, 1]], dtype=np.float32)
    moved = max(float(np.abs(corners @ a.T - corners[:, :2]).max()) for a in affines)
    static = moved < STATIC_PX
    if not (static or moving_camera):
        return np.zeros((T, H, W), dtype=np.int32)
    background, valid = background_model(frames, None if static else affines)
    diff = np.abs(frames.astype(np.float32) - background).sum(-1) / 255.0  # (T, H, W)
    if not static:  # a moving camera's background is aligned to about a pixel: ignore what a 1-px shift explains
        pad = np.pad(background, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        for dy in range(3):
            for dx in range(3):
                if (dy, dx) != (1, 1):
                    shifted = pad[:, dy:dy + H, dx:dx + W]
                    diff = np.minimum(diff, np.abs(frames.astype(np.float32) - shifted).sum(-1) / 255.0)
    foreground = ((diff > threshold) & valid).astype(np.uint8)

    out = np.zeros((T, H, W), dtype=np.int32)
    tracks: list[dict] = []  # last_t, pos (frame-0 coordinates), vel, colour, frames
    largest = max_area * H * W
    for t in range(T):
        count, labels, stats, centroids = cv2.connectedComponentsWithStats(foreground[t], connectivity=8)
        area = stats[1:, cv2.CC_STAT_AREA]
        picked = np.flatnonzero((area >= min_pixels) & (area <= largest)) + 1
        picked = np.array([c for c in picked if _stands_out(frames[t], labels, stats[c], c, threshold)], dtype=np.int64)
        if picked.size == 0:
            continue
        pos = np.c_[centroids[picked], np.ones(picked.size)] @ affines[t].T  # (C, 2) in frame-0 coordinates
        flat = labels.ravel()
        colour = np.stack([np.bincount(flat, weights=frames[t, ..., c].ravel(), minlength=count)[picked]
                           for c in range(3)], 1) / area[picked - 1, None]
        radius = np.sqrt(area[picked - 1] / np.pi)
        live = [k for k, tr in enumerate(tracks) if t - tr["last_t"] <= max_gap + 1]
        assigned = np.full(picked.size, -1)
        if live:
            cost = np.full((len(live), picked.size), 1e6)
            for i, k in enumerate(live):
                tr = tracks[k]
                dt = t - tr["last_t"]
                guess = tr["pos"] + tr["vel"] * dt
                dist = np.linalg.norm(pos - guess, axis=1)
                gate = 4.0 + 2.0 * np.maximum(radius, tr["radius"]) + 2.0 * (dt - 1)
                shade = np.abs(colour - tr["colour"]).sum(1) / 255.0
                ok = dist <= gate
                cost[i, ok] = dist[ok] / gate[ok] + shade[ok]
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols):
                if cost[r, c] < 1e6:
                    assigned[c] = live[r]
        for c in np.flatnonzero(assigned < 0):  # a piece of a mover matched in this frame joins it
            near = [k for k in set(assigned[assigned >= 0].tolist())
                    if np.linalg.norm(pos[c] - _matched_pos(pos, assigned, k)) <= 2.0 + 2.0 * tracks[k]["radius"]]
            if near:
                assigned[c] = near[0]
        for c, label in enumerate(picked):
            k = assigned[c]
            if k >= 0 and tracks[k]["last_t"] == t:  # a second piece of the same mover
                out[t][labels == label] = k + 1
                continue
            if k < 0:
                tracks.append({"last_t": t, "pos": pos[c], "vel": np.zeros(2), "colour": colour[c],
                               "radius": radius[c], "frames": 1, "seen": 0, "first_t": t, "first_pos": pos[c]})
                k = len(tracks) - 1
            else:
                tr = tracks[k]
                step = (pos[c] - tr["pos"]) / (t - tr["last_t"])
                tr["vel"] = step if tr["seen"] == 1 else 0.5 * (tr["vel"] + step)
                tr.update(last_t=t, pos=pos[c], colour=0.5 * (tr["colour"] + colour[c]), radius=radius[c],
                          frames=tr["frames"] + 1)
            tracks[k]["seen"] += 1
            out[t][labels == label] = k + 1
    root = _stitch(tracks, max_gap)
    frames_of = np.bincount(root, weights=[tr["frames"] for tr in tracks], minlength=len(tracks))
    keep = np.zeros(len(tracks) + 1, dtype=np.int32)
    kept = np.flatnonzero(frames_of >= min(min_frames, T))
    number = np.zeros(len(tracks), dtype=np.int32)
    number[kept] = np.arange(1, len(kept) + 1)
    keep[1:] = number[root]
    return keep[out]


def _matched_pos(pos: np.ndarray, assigned: np.ndarray, k: int) -> np.ndarray:
    """Position of the first candidate assigned to track ``k`` in this frame."""
    return pos[int(np.flatnonzero(assigned == k)[0])]


def _stands_out(frame: np.ndarray, labels: np.ndarray, stat: np.ndarray, label: int, threshold: float) -> bool:
    """Whether component ``label`` differs in colour from most of the ring two pixels around it."""
    import cv2

    x, y, w, h = (int(v) for v in stat[:4])
    y0, x0 = max(0, y - 3), max(0, x - 3)
    y1, x1 = min(labels.shape[0], y + h + 3), min(labels.shape[1], x + w + 3)
    mask = (labels[y0:y1, x0:x1] == label).astype(np.uint8)
    ring = cv2.dilate(mask, np.ones((5, 5), np.uint8)) > cv2.dilate(mask, np.ones((3, 3), np.uint8))
    if not ring.any():
        return True
    crop = frame[y0:y1, x0:x1].astype(np.float32)
    colour = crop[mask > 0].mean(0)
    similar = np.abs(crop[ring] - colour).sum(1) / 255.0 < 0.5 * threshold
    return float(similar.mean()) <= RING_SIMILAR


def _stitch(tracks: list[dict], max_gap: int) -> np.ndarray:
    """Join a track to an earlier one that ended shortly before where it starts (position predicted at constant
    velocity, similar colour); returns each track's root track."""
    root = np.arange(len(tracks))
    ends: dict[int, int] = {}  # root -> the track holding its latest end
    for b in sorted(range(len(tracks)), key=lambda k: tracks[k]["first_t"]):
        tb = tracks[b]
        best, best_cost = -1, 1.0
        for r, a in ends.items():
            ta = tracks[a]
            dt = tb["first_t"] - ta["last_t"]
            if not 0 < dt <= 2 * max_gap + 2:
                continue
            gate = 4.0 + 2.0 * max(ta["radius"], tb["radius"]) + 2.0 * dt
            dist = float(np.linalg.norm(tb["first_pos"] - (ta["pos"] + ta["vel"] * dt)))
            cost = dist / gate + float(np.abs(tb["colour"] - ta["colour"]).sum()) / 255.0
            if dist <= gate and cost < best_cost:
                best, best_cost = r, cost
        if best >= 0:
            root[b] = best
            ends[best] = b if tb["last_t"] >= tracks[ends[best]]["last_t"] else ends[best]
        else:
            ends[b] = b
    return root
