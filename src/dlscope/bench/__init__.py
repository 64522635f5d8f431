"""`dlscope bench`: this machine's arithmetic ceiling, and how close dlscope's training gets.

All figures come from one process and one run, each the median of `repeats` measurements;
within a repeat the compared variants run back to back (sgemm, engine epoch, conventional
epoch, CNN epoch; then ensemble and sequential, alternating which goes first), and every
ratio is the median of the per-repeat ratios, so the ratios hold on a machine whose load
drifts. Torch is set to all cores (`torch.set_num_threads(os.cpu_count())`) for every figure;
the engine then runs a small MLP step on one thread by its fixed rule (`train.threads`), so
`mlp_epoch_s` is a one-core figure, compared with one core's ceiling in `mlp_floor1_ratio`. The
log says the threads, and the load average at the start and the end.

    sgemm_gflops            float32 [2048x2048] @ [2048x2048], 2*n^3 FLOPs / median seconds
    sgemm1_gflops           the same on one thread
    mlp_epoch_s             one 60,000-image epoch of the 784-128-64-10 MLP, batch 64, Adam
                            1e-3, with `engine.train` (no test evaluation)
    mlp_floor_ratio         mlp_epoch_s / (FLOPs / sgemm throughput)
    mlp_floor1_ratio        mlp_epoch_s / (FLOPs / one-thread sgemm throughput)
    conventional_epoch_s    the same epoch written the usual way: a torch Dataset turning the
                            uint8 image into a normalized tensor per item (x.float()/255, then
                            (x-0.1307)/0.3081, as ToTensor + Normalize), DataLoader(batch 64,
                            shuffle=True), torch.optim.Adam defaults, zero_grad/backward/step
                            and loss.item() per step
    engine_vs_conventional  mlp_epoch_s / conventional_epoch_s
    cnn_epoch_s             one epoch of cnn-b (conv 16, 32, k3p1, pool 2, fc 128), batch 100
    cnn_floor_ratio         cnn_epoch_s / (FLOPs / sgemm throughput)
    ensemble8_s             8 weight-pca runs (784-128-64-10, batch 64, Adam 1e-3, seeds 0-7)
                            on 10,000 images each (1/6 epoch, 157 steps), as one ensemble
    sequential8_s           the same 8 runs one after the other with `engine.train`
    ensemble_ratio          ensemble8_s / sequential8_s
    hvp_per_s, hessian_top5_s, hessian_trace_s, hessian_density_s (and the HVPs/probes used):
                            curvature of the 784-128-64-10 MLP on 10,000 MNIST images
                            (`curvature_figures`)
    hessian_1k_s            `metrics.hessian.hessian_eigenvalues` of a 1-w1-w-1 MLP with ~1,000
                            parameters (models.width_for_params(2, 1000)) on 1,000 points of
                            sinc, MSE: exact float64 Hessian and its full spectrum
    cnn_ensemble3_s         3 cnn-b members (seeds 0-2) on 3,000 images, one epoch, trained
                            together as one grouped network (`train_ensemble(group_cnns=True)`)
    cnn_sequential3_s       the same 3 one after the other with `engine.train`
    cnn_ensemble_ratio      cnn_ensemble3_s / cnn_sequential3_s
    mlp_epoch_busy{k}_s     (--contention N, k = 1..N) mlp_epoch_s with k busy-loop processes
                            competing for the cores (`dlscope.contention.busy_processes`)
    conventional_busy{k}_s  conventional_epoch_s likewise
    busy{k}_ratio           mlp_epoch_busy{k}_s / mlp_epoch_s (conventional_busy{k}_ratio too)
    suite_s                 (--suite) `run all --profile quick` into a temporary folder
    suite_core_utilization  (--suite) its suite.json's core utilization: busy core-seconds of
                            its runs / (cores x wall time) (dlscope.driver.schedule)

FLOP counts (`floors.flops_per_epoch`): a forward pass costs 2 FLOPs per multiply-accumulate (MAC),
the backward pass twice the forward (input and weight gradients), so
    FLOPs per epoch = 3 x 2 x MACs per image x images.
MLP 784-128-64-10: MACs = 784*128 + 128*64 + 64*10 = 109,184, so 39.3 GFLOP per epoch.
cnn-b: MACs = 16*28*28*(1*9) + 32*14*14*(16*9) + 1568*128 + 128*10 = 1,218,048, 438.5 GFLOP.
Biases, activations, pooling, loss and optimizer are left out (under 2% of the MACs); the
first layer's unneeded input gradient is counted, so the floor is slightly generous.

Dated measurements and where the time goes (torch.profiler tables: `profile_steps("mlp" |
"cnn", fast=...)`, in `profiles`) are in docs/PERFORMANCE.md.

Modules: `floors` (FLOP counts, sgemm rate), `conventional` (the plain PyTorch loop),
`curvature` (the Hessian figures), `timing` (shared helpers), `run` (`run_bench`),
`profiles` (`profile_steps`).
"""

from dlscope.bench.conventional import ConventionalMnist, conventional_epoch
from dlscope.bench.curvature import curvature_figures
from dlscope.bench.floors import CNN, MLP, flops_per_epoch, macs_per_image, sgemm_gflops
from dlscope.bench.profiles import profile_steps
from dlscope.bench.run import run_bench

__all__ = ["CNN", "MLP", "ConventionalMnist", "conventional_epoch", "curvature_figures",
           "flops_per_epoch", "macs_per_image", "profile_steps", "run_bench", "sgemm_gflops"]
