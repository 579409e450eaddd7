"""AntMaze for ipdrl: gymnasium-robotics' mazes seen as D4RL's antmaze, a goal-reaching task to train the data's
controller on, and a waypoint planner over the maze's cells.

**Observations** are D4RL's 29 numbers: the ant's x, y and the rest of its state (``include_cfrc_ext_in_observation
=False``: qpos without x, y (13) and qvel (14)), without the goal. gymnasium-robotics observes a dict (state,
achieved goal, desired goal); :class:`AntMazeTask` flattens it and fixes each maze's evaluation start and goal cells
(D4RL's), so that a policy that never sees the goal can be scored. The evaluation goal is the goal cell's centre in
every episode, as the data's reward is (gymnasium-robotics would jitter it by up to a quarter cell each way, which
no policy that never sees the goal can follow); the start keeps the env's jitter.

**Reward and termination** are D4RL's: 1 within 0.5 of the goal (gymnasium-robotics: 0.45). Evaluation episodes
end at the goal, so an episode's return is its success (0 or 1) and the normalised score is the success rate x 100.
The datasets end their episodes in time-outs only: their termination function is "never".

**The controller's task** (:class:`AntGoalEnv`, ``AntGoal-v0``): Gymnasium's Ant-v5 on open ground with a goal
1-6 units away (a maze cell is 4), observing its state and the goal relative to its position in the frame of its
heading, at most 3 units away (:func:`controller_observation`); rewarded by its speed towards the goal (weighted 10
by default, as Minari's goal-reaching ant for its AntMaze datasets: at Ant-v5's weight 1, standing still for the
healthy reward pays more than the slow, turning gait a goal in any direction needs), Ant-v5's healthy reward and
control cost; a reached goal is replaced by a new one.
"""

from __future__ import annotations

import collections
import dataclasses

import gymnasium as gym
import numpy as np

ANT_GOAL_ENV = "AntGoal-v0"
SUCCESS_RADIUS = 0.5  # D4RL's
CELL_SIZE = 4.0  # gymnasium-robotics' maze_size_scaling for the ant


@dataclasses.dataclass(frozen=True)
class Maze:
    """A maze's grid (1 = wall), D4RL's evaluation start and goal cells (row, column), and hand-picked cells for
    the ``play`` datasets."""

    name: str
    grid: tuple[tuple[int, ...], ...]
    start: tuple[int, int]
    goal: tuple[int, int]
    play_cells: tuple[tuple[int, int], ...]

    @property
    def free_cells(self) -> list[tuple[int, int]]:
        return [(i, j) for i, row in enumerate(self.grid) for j, wall in enumerate(row) if wall != 1]

    def cell_xy(self, cell) -> np.ndarray:
        """The centre of cell (row, column) in the simulator's x, y (gymnasium-robotics' convention)."""
        rows, cols = len(self.grid), len(self.grid[0])
        return np.array([(cell[1] + 0.5) * CELL_SIZE - cols / 2 * CELL_SIZE,
                         rows / 2 * CELL_SIZE - (cell[0] + 0.5) * CELL_SIZE])

    def cell_of(self, xy) -> tuple[int, int]:
        rows, cols = len(self.grid), len(self.grid[0])
        return (int(np.floor((rows / 2 * CELL_SIZE - xy[1]) / CELL_SIZE)),
                int(np.floor((xy[0] + cols / 2 * CELL_SIZE) / CELL_SIZE)))

    def steps_to(self, goal) -> dict[tuple[int, int], int]:
        """Cells -> moves to ``goal`` (value iteration with unit costs on the cell graph, i.e. breadth first)."""
        distance, frontier = {tuple(goal): 0}, collections.deque([tuple(goal)])
        while frontier:
            i, j = frontier.popleft()
            for cell in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
                if cell not in distance and self.grid[cell[0]][cell[1]] != 1:
                    distance[cell] = distance[(i, j)] + 1
                    frontier.append(cell)
        return distance

    def waypoint(self, xy, goal_xy, distance: dict) -> np.ndarray:
        """Where to steer from ``xy``: the goal itself in its cell, else the centre of the next cell on a
        shortest path (``distance`` = :meth:`steps_to` of the goal's cell)."""
        i, j = self.cell_of(xy)
        here = distance.get((i, j))
        if here is None or here == 0:  # in the goal's cell (or pushed into a wall's: steer straight)
            return np.asarray(goal_xy, np.float64)
        nearer = min(((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)), key=lambda c: distance.get(c, 1 << 30))
        return self.cell_xy(nearer)


def _grid(rows: list) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(1 if cell == 1 else 0 for cell in row) for row in rows)


def _mazes() -> dict[str, Maze]:
    from gymnasium_robotics.envs.maze import maps

    return {
        "AntMaze_UMaze-v5": Maze("umaze", _grid(maps.U_MAZE), start=(1, 1), goal=(3, 1),
                                 play_cells=((1, 1), (1, 3), (3, 3), (3, 1))),
        "AntMaze_Medium_Diverse_GR-v5": Maze("medium", _grid(maps.MEDIUM_MAZE), start=(1, 1), goal=(6, 6),
                                             play_cells=((1, 1), (2, 5), (3, 3), (4, 6), (5, 3), (6, 1), (6, 6))),
        "AntMaze_Large_Diverse_GR-v5": Maze("large", _grid(maps.LARGE_MAZE), start=(1, 1), goal=(7, 9),
                                            play_cells=((1, 1), (1, 6), (3, 4), (3, 10), (5, 4), (5, 8), (7, 4),
                                                        (7, 9))),
    }


def maze(env_id: str) -> Maze:
    from ipdrl import robotics

    robotics.register()
    mazes = _mazes()
    if env_id not in mazes:
        raise ValueError(f"no AntMaze layout for {env_id!r}: use one of {', '.join(mazes)}.")
    return mazes[env_id]


def flat_observation(observation: dict) -> np.ndarray:
    """gymnasium-robotics' dict observation -> D4RL's 29 numbers: x, y, then the rest of the ant's state."""
    return np.concatenate([observation["achieved_goal"], observation["observation"]]).astype(np.float32)


class AntMazeTask(gym.Wrapper):
    """An AntMaze env as D4RL's: flat observations without the goal, the maze's evaluation start and goal (unless
    ``reset(options=...)`` names others), reward 1 and the episode's end within 0.5 of the goal."""

    def __init__(self, env, layout: Maze):
        super().__init__(env)
        self.layout = layout
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (29,), np.float32)

    def reset(self, *, seed=None, options=None):
        evaluation = options is None
        options = options or {"reset_cell": np.array(self.layout.start), "goal_cell": np.array(self.layout.goal)}
        observation, info = self.env.reset(seed=seed, options=options)
        if evaluation:  # D4RL's goal is one fixed point, the one the data is rewarded at: not re-jittered per episode
            self.env.unwrapped.goal = self.layout.cell_xy(self.layout.goal)
            self.env.unwrapped.update_target_site_pos()
        return flat_observation(observation), info

    def step(self, action):
        observation, _, _, truncated, info = self.env.step(action)
        success = bool(np.linalg.norm(observation["achieved_goal"] - observation["desired_goal"]) <= SUCCESS_RADIUS)
        info["success"] = success
        return flat_observation(observation), float(success), success, truncated, info


def make_maze(env_id: str, **kwargs) -> AntMazeTask:
    """AntMaze ``env_id`` as D4RL's antmaze (see the module's docstring)."""
    layout = maze(env_id)
    kwargs = {"include_cfrc_ext_in_observation": False, "continuing_task": True, "reset_target": True, **kwargs}
    return AntMazeTask(gym.make(env_id, **kwargs), layout)


class AntGoalEnv(gym.Env):
    """Ant-v5 on open ground reaching goals 1-6 units away; observes its state without x, y and the goal relative
    to its position (29 numbers, the same as the maze's controller sees with a waypoint as the goal)."""

    metadata = {"render_modes": []}

    def __init__(self, min_distance: float = 1.0, max_distance: float = 6.0, ctrl_cost_weight: float = 0.5,
                 healthy_reward: float = 1.0, progress_weight: float = 10.0):
        from gymnasium.envs.mujoco.ant_v5 import AntEnv

        # control cost and healthy reward default to Ant-v5's; the goal term's weight to Minari's goal-reaching ant's
        self.ant = AntEnv(exclude_current_positions_from_observation=False, include_cfrc_ext_in_observation=False,
                          ctrl_cost_weight=ctrl_cost_weight, healthy_reward=healthy_reward)
        self.min_distance, self.max_distance = min_distance, max_distance
        self.progress_weight = progress_weight
        self.action_space = self.ant.action_space
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (29,), np.float32)
        self.goal = np.zeros(2)

    @property
    def data(self):  # the simulator's state, so the generator's recorder can checkpoint mid-episode
        return self.ant.data

    def set_state(self, qpos, qvel):
        self.ant.set_state(qpos, qvel)

    def task_state(self) -> dict:
        """What, beyond the simulator, continues an episode exactly: the goal and the goal sampler's state."""
        return {"goal": self.goal.tolist(), "rng": self.np_random.bit_generator.state}

    def restore_task_state(self, state: dict) -> None:
        self.goal = np.asarray(state["goal"])
        self.np_random.bit_generator.state = state["rng"]

    def _new_goal(self, xy: np.ndarray) -> None:
        angle = self.np_random.uniform(0, 2 * np.pi)
        self.goal = xy + self.np_random.uniform(self.min_distance, self.max_distance) * np.array(
            [np.cos(angle), np.sin(angle)])

    def _observe(self, ant_obs: np.ndarray) -> np.ndarray:
        return controller_observation(ant_obs[2:], ant_obs[:2], self.goal)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        ant_obs, info = self.ant.reset(seed=seed)
        self._new_goal(ant_obs[:2])
        return self._observe(ant_obs), info

    def step(self, action):
        before = np.linalg.norm(self.goal - self.ant.data.qpos[:2])
        ant_obs, _, terminated, truncated, info = self.ant.step(action)
        after = np.linalg.norm(self.goal - ant_obs[:2])
        progress = self.progress_weight * (before - after) / self.ant.dt
        reward = (progress + (0.0 if terminated else self.ant._healthy_reward)
                  - self.ant._ctrl_cost_weight * float(np.square(action).sum()))
        info["reached"] = bool(after <= SUCCESS_RADIUS)
        if info["reached"]:
            self._new_goal(ant_obs[:2])
        return self._observe(ant_obs), reward, terminated, truncated, info


TARGET_HORIZON = 3.0  # the controller sees targets no farther than this: beyond, only their direction matters


def controller_observation(state: np.ndarray, xy: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The controller's input: the ant's state without x, y (``state[1:5]`` its orientation quaternion), and where it
    should go relative to where it is, in the frame of its heading (so that "go left" looks the same whichever way
    it faces), at most ``TARGET_HORIZON`` away."""
    w, x, y, z = state[1:5]
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    dx, dy = np.asarray(target, np.float64) - xy
    local = np.array([np.cos(yaw) * dx + np.sin(yaw) * dy, -np.sin(yaw) * dx + np.cos(yaw) * dy])
    local *= min(1.0, TARGET_HORIZON / max(float(np.linalg.norm(local)), 1e-9))
    return np.concatenate([state, local]).astype(np.float32)


def register_controller_task(**weights) -> None:
    """(Re)register ``AntGoal-v0`` with these :class:`AntGoalEnv` reward weights, for every later ``make`` in this
    process (the SAC trainer makes its training and evaluation envs by id)."""
    gym.registry.pop(ANT_GOAL_ENV, None)
    gym.register(ANT_GOAL_ENV, entry_point=AntGoalEnv, max_episode_steps=1000, kwargs=weights)


def make(env_id: str, **kwargs):
    """``AntGoal-v0`` (the controller's task) or an AntMaze as D4RL's."""
    if env_id == ANT_GOAL_ENV:
        if ANT_GOAL_ENV not in gym.registry:
            register_controller_task()
        return gym.make(ANT_GOAL_ENV, **kwargs)
    return make_maze(env_id, **kwargs)
